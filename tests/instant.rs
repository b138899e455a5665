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

/// Whether the server's queue is empty within 5 s (a message leaves it a moment after its
/// copy lands).
fn queue_empties(server: &Server) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !support::waiting(&server.spool()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    support::waiting(&server.spool()).is_empty()
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
    assert!(queue_empties(&server), "delivered and removed from the queue");
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
/// the message's fixed name, which its run marked the queue file for, not made a second
/// time (doc/queue.md, S3).
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

/// The `postern-deliver --instant` processes whose command line names `conf`.
fn instant_processes(conf: &Path) -> Vec<u32> {
    let conf = conf.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let words: Vec<String> = line.split(|&b| b == 0).map(|w| String::from_utf8_lossy(w).into_owned()).collect();
            words.iter().any(|w| w == "--instant") && words.contains(&conf)
        })
        .collect()
}

/// The PIDs of the delivery processes that wrote `status=sent` lines to the log.
fn delivering_pids(log: &str) -> std::collections::BTreeSet<String> {
    log.lines()
        .filter(|l| l.contains("status=sent"))
        .filter_map(|l| l.strip_prefix("postern/deliver[")?.split(']').next().map(str::to_string))
        .collect()
}

/// The log once it has `count` `status=sent` lines, or as it is after 5 s.
fn log_with_sent(server: &Server, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.log().matches("status=sent").count() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.log()
}

fn send_one(addr: std::net::SocketAddr, subject: &str) -> String {
    let mut c = Client::greeted(addr);
    c.cmd("EHLO client.test");
    c.open_data("someone@remote.test", &["alice@example.test"]);
    c.mail_text(format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes())
}

/// Waits up to `limit` for `count` messages in alice's maildir.
fn wait_maildir(alice: &Path, count: usize, limit: Duration) -> usize {
    let started = Instant::now();
    while list(&alice.join("new")).len() < count && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(10));
    }
    list(&alice.join("new")).len()
}

/// One process delivers what arrives while it runs, then ends once idle; the next message
/// starts another. Mail accepted by many sessions at once is delivered by that one process,
/// not one process per message.
#[test]
fn one_process_delivers_what_arrives_and_ends_once_idle() {
    let dir = TempDir::new("instant-one");
    let config = instant(&config_with(dir.path(), ""));
    let server = Server::start_in(dir, &config);
    let conf = server.dir.path().join("postern.conf");
    let alice = server.dir.path().join("maildirs/alice");
    let addr = server.addr;
    let senders: Vec<_> = (0..4)
        .map(|t| std::thread::spawn(move || (0..10).all(|n| send_one(addr, &format!("{t}.{n}")).starts_with("250 "))))
        .collect();
    assert!(senders.into_iter().all(|s| s.join().unwrap()));
    assert_eq!(wait_maildir(&alice, 40, Duration::from_secs(10)), 40, "{}", server.log());
    assert_eq!(instant_processes(&conf).len(), 1, "it runs on for a moment");
    // One process, or a few when a loaded machine paused the clients for longer than IDLE.
    let first = delivering_pids(&log_with_sent(&server, 40));
    assert!(first.len() <= 3, "{} processes for 40 messages: {first:?}\n{}", first.len(), server.log());
    // Idle for postern::instant::IDLE, it ends.
    let deadline = Instant::now() + postern::instant::IDLE + Duration::from_secs(5);
    while !instant_processes(&conf).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(instant_processes(&conf).is_empty(), "ended once idle");
    assert!(support::waiting(&server.spool()).is_empty());
    // The next message starts another, at once.
    let started = Instant::now();
    assert!(send_one(addr, "later").starts_with("250 "));
    assert_eq!(wait_maildir(&alice, 41, Duration::from_secs(5)), 41, "{}", server.log());
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    // The line that says so follows the copy a moment later.
    let all = delivering_pids(&log_with_sent(&server, 41));
    assert_eq!(all.difference(&first).count(), 1, "another process: {first:?} then {all:?}");
}

/// Killed just after it gave its lock back, before its last look at new/ (crash point
/// `instant-lock-released`, doc/queue.md): what it delivered is delivered, the daemon says
/// so, and the next message starts another process and lands at once.
#[test]
fn killed_after_giving_its_lock_back_the_next_message_is_delivered_at_once() {
    let dir = TempDir::new("instant-released");
    let config = instant(&config_with(dir.path(), ""));
    let server = Server::start_wrapped(dir, &config, &["env", "POSTERN_CRASH_AT=instant-lock-released"]);
    let alice = server.dir.path().join("maildirs/alice");
    assert!(send_one(server.addr, "first").starts_with("250 "));
    assert_eq!(wait_maildir(&alice, 1, Duration::from_secs(5)), 1, "{}", server.log());
    let log = server.log_with("instant delivery ended without delivering");
    assert!(log.contains("crash point instant-lock-released"), "{log}");
    let started = Instant::now();
    assert!(send_one(server.addr, "second").starts_with("250 "));
    assert_eq!(wait_maildir(&alice, 2, Duration::from_secs(5)), 2, "{}", server.log());
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    // The message leaves the queue a moment after its copy lands.
    assert!(queue_empties(&server), "{}", server.log());
}

/// The delivery process killed with SIGKILL again and again while mail pours in, the
/// daemon left running: the daemon starts another each time, every acknowledged message
/// reaches the maildir exactly once, and nothing waits for a run from cron.
#[test]
fn the_delivery_process_killed_under_load_loses_and_repeats_nothing() {
    let dir = TempDir::new("instant-killed");
    let config = instant(&config_with(dir.path(), "max_connections = 100\nmax_per_ip = 100\n"));
    let server = Server::start_in(dir, &config);
    let conf = server.dir.path().join("postern.conf");
    let alice = server.dir.path().join("maildirs/alice");
    let addr = server.addr;
    let stop = Instant::now() + Duration::from_secs(2);
    let senders: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    if Instant::now() > stop || n >= 2000 {
                        break;
                    }
                    let subject = format!("{t}.{n}");
                    if send_one(addr, &subject).starts_with("250 ") {
                        acknowledged.push(subject);
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut kills = 0;
    while Instant::now() < stop {
        for pid in instant_processes(&conf) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let acknowledged: Vec<String> = senders.into_iter().flat_map(|s| s.join().unwrap()).collect();
    assert!(kills >= 3 && acknowledged.len() >= 50, "{kills} kills, {} messages", acknowledged.len());
    let count = wait_maildir(&alice, acknowledged.len(), Duration::from_secs(20));
    let mut copies = std::collections::HashMap::<String, usize>::new();
    for message in support::maildir(&alice) {
        let subject = message.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or("").to_string();
        *copies.entry(subject).or_default() += 1;
    }
    let lost: Vec<&String> = acknowledged.iter().filter(|s| !copies.contains_key(*s)).collect();
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "{} of {} lost ({count} in the maildir): {lost:?}", lost.len(), acknowledged.len());
    assert!(twice.is_empty(), "copied twice: {twice:?}");
    assert!(queue_empties(&server), "{}", server.log());
}

/// A hundred postern-sendmail runs at once, with no daemon: one delivery process at a
/// time delivers them all, not one process per message.
#[test]
fn many_sendmail_runs_at_once_start_one_delivery_process() {
    let dir = TempDir::new("instant-many-sendmail");
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, instant(&config_with(dir.path(), ""))).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (done, conf) = (std::sync::Arc::clone(&done), conf.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(instant_processes(&conf).len());
                std::thread::sleep(Duration::from_millis(2));
            }
            most
        })
    };
    let runs: Vec<_> = (0..100)
        .map(|n| {
            let mut child = Command::new(env!("CARGO_BIN_EXE_postern-sendmail"))
                .arg("alice")
                .env("POSTERN_CONF", &conf)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(format!("Subject: run {n}\n\nhi\n").as_bytes()).unwrap();
            child
        })
        .collect();
    for mut run in runs {
        assert!(run.wait().unwrap().success());
    }
    let alice = dir.path().join("maildirs/alice");
    assert_eq!(wait_maildir(&alice, 100, Duration::from_secs(20)), 100);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = watcher.join().unwrap();
    // One, and for a moment two: one that gave its lock back and is ending beside the next.
    assert!((1..=2).contains(&most), "{most} delivery processes at once");
}

/// The mailboxes are read at each use: changed while the delivery process runs, the next
/// message goes where they say now.
#[test]
fn a_mailbox_moved_while_the_process_runs_gets_the_next_message() {
    let dir = TempDir::new("instant-tables");
    let config = instant(&config_with(dir.path(), ""));
    let server = Server::start_in(dir, &config);
    let conf = server.dir.path().join("postern.conf");
    let (alice, moved) = (server.dir.path().join("maildirs/alice"), server.dir.path().join("maildirs/alice2"));
    assert!(send_one(server.addr, "before").starts_with("250 "));
    assert_eq!(wait_maildir(&alice, 1, Duration::from_secs(5)), 1, "{}", server.log());
    assert_eq!(instant_processes(&conf).len(), 1, "still running");
    std::fs::write(server.dir.path().join("mailboxes"), format!("alice: {}/\n", moved.display())).unwrap();
    assert!(send_one(server.addr, "after").starts_with("250 "));
    assert_eq!(wait_maildir(&moved, 1, Duration::from_secs(5)), 1, "{}", server.log());
    assert_eq!(list(&alice.join("new")).len(), 1);
}

/// The lock a root process takes (the launcher, a root delivery run) is made already owned
/// by the spool's owner, so that no kill between its making and a chown leaves a file the
/// unprivileged daemon cannot open (doc/queue.md, `spool/instant.lock`); one left root-owned
/// is given back; of several takers at once, one has it.
#[test]
fn a_lock_made_by_root_is_the_spool_owners_from_the_start() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    if support::skip_unless_root("make the lock as root in a spool another user owns") {
        return;
    }
    let dir = TempDir::new("instant-lock-owner");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let (uid, gid) = (64_000 + std::process::id() % 1000, 64_000 + std::process::id() % 1000);
    std::os::unix::fs::chown(&spool, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let lock = spool.join(postern::spool::INSTANT_LOCK);
    let owned = || {
        let meta = std::fs::symlink_metadata(&lock).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    };
    // The spool's owner opens it as the unprivileged daemon would.
    let owner_opens = || {
        Command::new("sh")
            .args(["-c", "exec 2>/dev/null 3<>\"$0\"", lock.to_str().unwrap()])
            .uid(uid)
            .gid(gid)
            .status()
            .unwrap()
            .success()
    };

    let held = postern::spool::Spool::take_instant_lock(&spool).unwrap();
    assert!(held.is_some());
    assert_eq!(owned(), (uid, gid, 0o600));
    assert!(owner_opens());
    assert!(postern::spool::Spool::take_instant_lock(&spool).unwrap().is_none(), "held twice");
    drop(held);

    std::os::unix::fs::chown(&lock, Some(0), Some(0)).unwrap();
    assert!(!owner_opens(), "a root-owned lock should be closed to the spool's owner");
    // A child another test forks meanwhile holds a copy of the dropped descriptor, and so
    // its lock, until it execs.
    let deadline = Instant::now() + Duration::from_secs(5);
    while postern::spool::Spool::take_instant_lock(&spool).unwrap().is_none() {
        assert!(Instant::now() < deadline, "the lock was never free again");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(owned(), (uid, gid, 0o600));
    assert!(owner_opens());

    std::fs::remove_file(&lock).unwrap();
    let spool = std::sync::Arc::new(spool);
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let spool = spool.clone();
            std::thread::spawn(move || postern::spool::Spool::take_instant_lock(&spool).unwrap())
        })
        .collect();
    let held: Vec<_> = takers.into_iter().filter_map(|t| t.join().unwrap()).collect();
    assert!(held.len() == 1 && held.iter().all(|f| postern::spool::Spool::is_instant_lock(&spool, f)));
    assert_eq!(owned(), (uid, gid, 0o600));
}
