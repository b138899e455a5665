//! The queue's promises (doc/queue.md) kept under faults: a spool filesystem that fills up, and
//! a delivery run killed at each crash point. Mail is delivered or its sender told; a crash
//! costs at worst a second copy.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use postern::smtp::command::BodyType;
use support::{FakeMx, Server, SmallFs, TempDir, deliver_with, list, maildir, now, waiting};

const HOUR: u64 = 3600;

/// A configuration in `dir`, with `ghost`, an alias of a user who does not exist.
fn configure(dir: &Path, extra: &str) -> PathBuf {
    let conf = dir.join("postern.conf");
    std::fs::write(&conf, support::config_with(dir, extra)).unwrap();
    let aliases = dir.join("aliases");
    let text = std::fs::read_to_string(&aliases).unwrap();
    std::fs::write(&aliases, text + "ghost: carol\n").unwrap();
    conf
}

fn queue(dir: &Path, from: &str, to: &[&str], arrived: u64) -> String {
    let text = b"Subject: queued\r\nFrom: alice@example.test\r\n\r\nbody\r\n";
    support::inject(&dir.join("spool"), from, to, arrived, BodyType::SevenBit, text)
}

fn alice(dir: &Path) -> Vec<String> {
    maildir(&dir.join("maildirs/alice"))
}

/// A message for alice and bob (bob gets a mailbox too), so two copies noted in its log,
/// whose delivery run was killed at `point`; with the message's ID.
fn two_copies_killed_at(point: &str) -> (Crashed, String) {
    let c = setup("");
    let mailboxes = c.dir.path().join("mailboxes");
    let text = std::fs::read_to_string(&mailboxes).unwrap();
    std::fs::write(&mailboxes, format!("{text}bob: {}/maildirs/bob/\n", c.dir.path().display())).unwrap();
    let id = queue(c.dir.path(), "sender@remote.test", &["alice@example.test", "bob@example.test"], now());
    crash_at(&c.conf, point, now());
    (c, id)
}

/// Each of alice and bob has one copy, and nothing is left in the spool.
fn assert_one_copy_each(dir: &Path) {
    assert_eq!(alice(dir).len(), 1, "not delivered again");
    assert_eq!(maildir(&dir.join("maildirs/bob")).len(), 1);
    assert_queue_empty(dir);
}

/// Runs postern-deliver, acting as if it were `at`.
fn run(conf: &Path, at: u64) -> (std::process::ExitStatus, String) {
    deliver_with(conf, &[("POSTERN_NOW", &at.to_string())], &[])
}

fn run_ok(conf: &Path, at: u64) -> String {
    let (status, log) = run(conf, at);
    assert!(status.success(), "{log}");
    log
}

/// Nothing left anywhere in the spool: no message, no log, no draft.
fn assert_queue_empty(dir: &Path) {
    let spool = dir.join("spool");
    for sub in ["tmp", "new", "cur"] {
        assert_eq!(list(&spool.join(sub)), Vec::<PathBuf>::new(), "spool/{sub} is not empty");
    }
}

fn empty_logs(dir: &Path) -> Vec<PathBuf> {
    let logs = list(&dir.join("spool/cur"));
    logs.into_iter().filter(|p| p.extension().is_some() && std::fs::metadata(p).unwrap().len() == 0).collect()
}

fn reports_for(mail: &[String], rcpt: &str, action: &str) -> usize {
    mail.iter().filter(|m| m.contains(&format!("Action: {action}")) && m.contains(rcpt)).count()
}

#[test]
fn a_report_is_never_lost_on_a_full_spool() {
    if support::skip_unless_root("mount a small tmpfs for the spool") {
        return;
    }
    for free in 0..=4 {
        let fs = SmallFs::mount("full-report", "1m");
        let dir = fs.path();
        let conf = configure(dir, "");
        queue(dir, "alice@example.test", &["ghost@example.test"], now());
        fs.fill_leaving(free);
        let (status, log) = run(&conf, now());
        let told = reports_for(&alice(dir), "carol@example.test", "failed");
        assert!(told == 1 || !waiting(&dir.join("spool")).is_empty(), "{free} pages: lost: {log}");
        assert!(status.success() || log.contains("the spool is full"), "{free} pages: {log}");
        assert_eq!(empty_logs(dir), Vec::<PathBuf>::new(), "{free} pages: {log}");
        fs.empty_filler();
        let log = run_ok(&conf, now() + HOUR);
        assert_eq!(reports_for(&alice(dir), "carol@example.test", "failed"), 1, "{free} pages: {log}");
        assert_queue_empty(dir);
    }
}

#[test]
fn a_full_spool_stops_the_run_and_makes_no_second_copy() {
    if support::skip_unless_root("mount a small tmpfs for the spool") {
        return;
    }
    for free in 0..=4 {
        let fs = SmallFs::mount("full-copy", "1m");
        let dir = fs.path();
        let conf = configure(dir, "");
        queue(dir, "sender@remote.test", &["alice@example.test"], now());
        queue(dir, "sender@remote.test", &["alice@example.test"], now());
        fs.fill_leaving(free);
        let (status, log) = run(&conf, now());
        if free == 0 {
            assert!(!status.success() && log.contains("the spool is full"), "{log}");
            assert_eq!(list(&dir.join("spool/new")).len(), 2, "both messages left as they were: {log}");
            assert!(list(&dir.join("spool/cur")).is_empty(), "{log}");
            assert!(alice(dir).is_empty());
        }
        assert_eq!(empty_logs(dir), Vec::<PathBuf>::new(), "{free} pages: {log}");
        fs.empty_filler();
        let log = run_ok(&conf, now() + HOUR);
        assert_eq!(alice(dir).len(), 2, "{free} pages: one copy of each: {log}");
        assert_queue_empty(dir);
    }
}

#[test]
fn a_delay_warning_is_recorded_only_once_queued() {
    if support::skip_unless_root("mount a small tmpfs for the spool") {
        return;
    }
    for free in 0..=4 {
        let fs = SmallFs::mount("full-warn", "1m");
        let dir = fs.path();
        let conf = configure(dir, "");
        let arrived = now() - 5 * HOUR;
        let id = queue(dir, "alice@example.test", &["bob@remote.test"], arrived);
        run_ok(&conf, arrived + 4 * HOUR); // deferred: there is no DNS here
        fs.fill_leaving(free);
        let (_, full) = run(&conf, arrived + 5 * HOUR);
        let log_text = std::fs::read_to_string(dir.join("spool/cur").join(format!("{id}.log"))).unwrap();
        let warnings = reports_for(&alice(dir), "bob@remote.test", "delayed");
        let queued_warnings = waiting(&dir.join("spool")).len().saturating_sub(1);
        assert!(!log_text.contains(" warned ") || warnings + queued_warnings == 1, "{free} pages: {full}");
        fs.empty_filler();
        let log = run_ok(&conf, arrived + 6 * HOUR);
        assert_eq!(reports_for(&alice(dir), "bob@remote.test", "delayed"), 1, "{free} pages: {full}\n{log}");
        let log_text = std::fs::read_to_string(dir.join("spool/cur").join(format!("{id}.log"))).unwrap();
        assert_eq!(log_text.matches(" warned ").count(), 1, "{log_text}");
    }
}

/// Runs postern-deliver so that it dies at `point`, and checks that it did.
fn crash_at(conf: &Path, point: &str, at: u64) {
    crash_with(conf, point, at, &[]);
}

/// `crash_at` with more of the environment: `POSTERN_NAMED_DRAFTS` for drafts named in tmp/,
/// as where the filesystem has no anonymous files.
fn crash_with(conf: &Path, point: &str, at: u64, env: &[(&str, &str)]) {
    let at = at.to_string();
    let env = [&[("POSTERN_CRASH_AT", point), ("POSTERN_NOW", at.as_str())], env].concat();
    let (status, log) = deliver_with(conf, &env, &[]);
    assert_eq!(status.signal(), Some(libc::SIGABRT), "did not stop at {point}: {log}");
    assert!(log.contains(&format!("crash point {point}")), "{log}");
}

struct Crashed {
    dir: TempDir,
    conf: PathBuf,
}

fn setup(extra: &str) -> Crashed {
    let dir = TempDir::new("crash");
    let conf = configure(dir.path(), extra);
    Crashed { dir, conf }
}

#[test]
fn killed_after_a_local_copy_the_next_run_finds_it_and_makes_no_second() {
    let c = setup("");
    let cur = c.dir.path().join("maildirs/alice/cur");
    queue(c.dir.path(), "sender@remote.test", &["alice@example.test"], now());
    crash_at(&c.conf, "after-local-copy", now());
    assert_eq!(alice(c.dir.path()).len(), 1, "the copy was made before the crash");
    let log = run_ok(&c.conf, now());
    assert_eq!(alice(c.dir.path()).len(), 1, "{log}");
    assert!(log.contains("the copy a killed run made is there; not copied again"), "{log}");
    assert!(log.contains("status=sent"), "{log}");
    assert_queue_empty(c.dir.path());

    // A reader moved the copy to cur/ (Dovecot's name) before the next run: found there.
    queue(c.dir.path(), "sender@remote.test", &["alice@example.test"], now());
    crash_at(&c.conf, "after-local-copy", now());
    let new = list(&c.dir.path().join("maildirs/alice/new"));
    assert_eq!(new.len(), 2);
    for copy in new {
        let name = copy.file_name().unwrap().to_str().unwrap().to_string();
        std::fs::rename(&copy, cur.join(format!("{name},S=120,W=125:2,S"))).unwrap();
    }
    let log = run_ok(&c.conf, now());
    assert_eq!(alice(c.dir.path()).len() + list(&cur).len(), 2, "{log}");
    assert_queue_empty(c.dir.path());

    // Killed after the name was noted, before the copy: the copy is made once.
    queue(c.dir.path(), "sender@remote.test", &["alice@example.test"], now());
    crash_at(&c.conf, "local-copy-noted", now());
    assert!(alice(c.dir.path()).is_empty());
    let log = run_ok(&c.conf, now());
    assert_eq!(alice(c.dir.path()).len(), 1, "{log}");
    assert!(!log.contains("not copied again"), "{log}");
    assert_queue_empty(c.dir.path());
}

#[test]
fn killed_after_the_log_line_the_next_run_only_removes_the_message() {
    let (c, id) = two_copies_killed_at("before-remove");
    assert_eq!(waiting(&c.dir.path().join("spool")).len(), 1);
    let lines = std::fs::read_to_string(c.dir.path().join(format!("spool/cur/{id}.log"))).unwrap();
    assert_eq!(lines.matches(" sent <").count(), 2, "{lines}");
    run_ok(&c.conf, now());
    // Recorded as sent: not delivered again.
    assert_one_copy_each(c.dir.path());
}

#[test]
fn a_message_delivered_at_once_into_one_maildir_has_no_log_and_a_killed_run_is_told_by_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let c = setup("");
    let spool = c.dir.path().join("spool");
    let id = queue(c.dir.path(), "sender@remote.test", &["alice@example.test"], now());
    let mode = |id: &str| std::fs::metadata(spool.join("new").join(id)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&id), 0o600);
    crash_at(&c.conf, "before-remove", now());
    // The copy is made under the message's own name, and the queue file says so (ls -l: -rwx------).
    assert!(!spool.join(format!("cur/{id}.log")).exists(), "no log was made for it");
    assert_eq!(mode(&id), 0o700);
    let copies = list(&c.dir.path().join("maildirs/alice/new"));
    assert_eq!(copies.len(), 1);
    let name = copies[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.ends_with(&format!(".Q{id}_R0.mail.example.test")), "{name}");
    let log = run_ok(&c.conf, now());
    assert!(log.contains("the copy a killed run made is there; not copied again"), "{log}");
    assert_eq!(alice(c.dir.path()).len(), 1, "{log}");
    assert_queue_empty(c.dir.path());

    // Killed while the copy was being written: what it left in tmp/ is written again.
    let id = queue(c.dir.path(), "sender@remote.test", &["alice@example.test"], now());
    crash_at(&c.conf, "local-copy-noted", now());
    assert_eq!(mode(&id), 0o700);
    let arrived = std::fs::read_to_string(spool.join("new").join(&id)).unwrap();
    let arrived = arrived.lines().find_map(|l| l.strip_prefix("arrived: ")).unwrap().to_string();
    let torn = c.dir.path().join(format!("maildirs/alice/tmp/{arrived}.Q{id}_R0.mail.example.test"));
    std::fs::write(&torn, "Subject: tor").unwrap();
    let log = run_ok(&c.conf, now());
    assert!(!log.contains("not copied again"), "{log}");
    let copies = alice(c.dir.path());
    assert_eq!(copies.len(), 2, "{log}");
    assert!(copies.iter().all(|m| m.contains("Subject: queued") && m.ends_with("body\n")), "{copies:?}");
    assert!(list(&c.dir.path().join("maildirs/alice/tmp")).is_empty());
    assert_queue_empty(c.dir.path());
}

#[test]
fn killed_between_removing_a_message_and_its_log_the_log_is_swept() {
    let (c, id) = two_copies_killed_at("after-message-removed");
    assert!(c.dir.path().join(format!("spool/cur/{id}.log")).exists(), "the log is left behind");
    let log = run_ok(&c.conf, now());
    assert!(log.contains("removed a delivery log left without its message"), "{log}");
    assert_one_copy_each(c.dir.path());
}

#[test]
fn killed_after_a_report_is_queued_the_sender_is_told_at_worst_twice() {
    let c = setup("");
    queue(c.dir.path(), "alice@example.test", &["ghost@example.test"], now());
    crash_at(&c.conf, "after-report-queued", now());
    run_ok(&c.conf, now());
    let told = reports_for(&alice(c.dir.path()), "carol@example.test", "failed");
    assert_eq!(told, 2, "the report was queued but not recorded, so it is built again");
    assert_queue_empty(c.dir.path());
}

#[test]
fn killed_while_writing_a_report_the_draft_goes_and_the_report_is_built_again() {
    for named in [false, true] {
        let c = setup("");
        queue(c.dir.path(), "alice@example.test", &["ghost@example.test"], now());
        let env: &[(&str, &str)] = if named { &[("POSTERN_NAMED_DRAFTS", "1")] } else { &[] };
        crash_with(&c.conf, "report-draft-written", now(), env);
        // An anonymous draft is gone with its process; a named one is left in tmp/.
        assert_eq!(list(&c.dir.path().join("spool/tmp")).len(), usize::from(named), "named drafts: {named}");
        let log = run_ok(&c.conf, now());
        assert_eq!(log.contains("removed leftover"), named, "{log}");
        assert_eq!(reports_for(&alice(c.dir.path()), "carol@example.test", "failed"), 1, "{log}");
        assert_queue_empty(c.dir.path());
    }
}

#[test]
fn killed_after_a_delay_warning_is_queued_it_is_sent_at_worst_twice() {
    let c = setup("");
    let arrived = now() - 5 * HOUR;
    let id = queue(c.dir.path(), "alice@example.test", &["bob@remote.test"], arrived);
    run_ok(&c.conf, arrived + 4 * HOUR);
    crash_at(&c.conf, "after-warning-queued", arrived + 5 * HOUR);
    run_ok(&c.conf, arrived + 5 * HOUR);
    assert_eq!(reports_for(&alice(c.dir.path()), "bob@remote.test", "delayed"), 2);
    run_ok(&c.conf, arrived + 6 * HOUR);
    assert_eq!(reports_for(&alice(c.dir.path()), "bob@remote.test", "delayed"), 2, "recorded: no third");
    let log = std::fs::read_to_string(c.dir.path().join(format!("spool/cur/{id}.log"))).unwrap();
    assert_eq!(log.matches(" warned ").count(), 1, "{log}");
}

#[test]
fn killed_after_a_remote_copy_the_next_run_sends_it_at_worst_twice() {
    let sink = FakeMx::start("127.0.0.1:0", |_| None);
    let c = setup(&format!("relayhost = [127.0.0.1]:{}\n", sink.addr.port()));
    queue(c.dir.path(), "sender@example.test", &["bob@remote.test"], now());
    crash_at(&c.conf, "after-remote-copy", now());
    assert_eq!(sink.messages().len(), 1, "accepted with 250 before the crash");
    run_ok(&c.conf, now());
    assert_eq!(sink.messages().len(), 2, "RFC 1047: a duplicate, never a loss");
    assert_queue_empty(c.dir.path());
}

/// `postern-queue requeue`: a deferred message is tried by the next run, back-off or not,
/// and lives on from the requeue, as if new; killed once its line is written, the requeue
/// holds (crash point `requeue-appended`).
#[test]
fn a_requeued_message_is_tried_at_once_and_its_lifetime_runs_from_then() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let down = Arc::new(AtomicBool::new(true));
    let refusing = Arc::clone(&down);
    let sink = FakeMx::start("127.0.0.1:0", move |command| {
        (refusing.load(Ordering::SeqCst) && command.starts_with("RCPT")).then(|| "451 4.3.0 not now".to_string())
    });
    let c = setup(&format!("relayhost = [127.0.0.1]:{}\n", sink.addr.port()));
    let dir = c.dir.path();
    let t0 = now();
    // Half an hour short of the five days a message lives.
    let id = queue(dir, "alice@example.test", &["bob@remote.test"], t0 - 5 * 24 * HOUR + HOUR / 2);
    let tries = || sink.commands().iter().filter(|c| c.starts_with("RCPT")).count();
    run_ok(&c.conf, t0);
    assert_eq!(tries(), 1);
    run_ok(&c.conf, t0 + 60);
    assert_eq!(tries(), 1, "its back-off is not over");
    let requeue = |at: u64, crash: Option<&str>| {
        let mut command = std::process::Command::new(support::program("postern-queue"));
        command.arg("-c").arg(&c.conf).args(["requeue", &id]).env("POSTERN_NOW", at.to_string());
        if let Some(point) = crash {
            command.env("POSTERN_CRASH_AT", point);
        }
        command.output().unwrap()
    };
    let out = requeue(t0 + 60, Some("requeue-appended"));
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("requeued"), "{out:?}");
    run_ok(&c.conf, t0 + 60);
    assert_eq!(tries(), 2, "the line written before the kill holds");
    let out = requeue(t0 + 120, None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{id}: requeued\n"), "{out:?}");
    run_ok(&c.conf, t0 + 120);
    assert_eq!(tries(), 3);
    // Two hours on, the five days since it arrived are over; it is tried, not bounced.
    down.store(false, Ordering::SeqCst);
    let log = run_ok(&c.conf, t0 + 2 * HOUR);
    // (The fake answers the DATA sent after a refused RCPT with 354: it gets an empty message.)
    assert_eq!(sink.messages().iter().filter(|m| m.as_slice() != b".\r\n").count(), 1, "{log}");
    assert_eq!(reports_for(&alice(dir), "bob@remote.test", "failed"), 0, "{log}");
    assert_queue_empty(dir);
}

#[test]
fn a_message_left_under_two_names_is_delivered_once() {
    let c = setup("");
    let id = queue(c.dir.path(), "sender@remote.test", &["alice@example.test"], now());
    let spool = c.dir.path().join("spool");
    // A move to cur/ by link and unlink, killed between the two.
    std::fs::hard_link(spool.join("new").join(&id), spool.join("cur").join(&id)).unwrap();
    let log = run_ok(&c.conf, now());
    assert!(log.contains("removed its second name"), "{log}");
    assert_eq!(alice(c.dir.path()).len(), 1, "{log}");
    assert_queue_empty(c.dir.path());
}

/// A message a local user left in maildrop/ (as the setgid postern-sendmail leaves it).
fn drop_one(dir: &Path) -> String {
    drop_text(dir, b"Subject: dropped\r\n\r\nbody\r\n")
}

fn drop_text(dir: &Path, text: &[u8]) -> String {
    use postern::smtp::address::{ForwardPath, ReversePath};
    let maildrop = dir.join("spool/maildrop");
    std::fs::create_dir_all(&maildrop).unwrap();
    let (from, to) =
        (ReversePath::parse(b"carol@example.test").unwrap(), ForwardPath::parse(b"alice@example.test").unwrap());
    let envelope = postern::spool::Envelope::local(now(), from, vec![to], BodyType::SevenBit, false);
    let id = postern::spool::QueueId::generate();
    postern::spool::maildrop::drop_message(&dir.join("spool"), &id, &envelope, text).unwrap();
    id.to_string()
}

#[test]
fn killed_after_a_pickup_queued_a_message_the_next_run_delivers_it_once() {
    let c = setup("");
    let id = drop_one(c.dir.path());
    crash_at(&c.conf, "after-pickup-queued", now());
    let spool = c.dir.path().join("spool");
    assert!(spool.join("new").join(&id).exists(), "queued under the ID it was dropped with");
    assert!(spool.join("maildrop").join(&id).exists(), "its maildrop name is still there");
    assert!(alice(c.dir.path()).is_empty(), "nothing was delivered before the crash");
    let log = run_ok(&c.conf, now());
    assert_eq!(alice(c.dir.path()).len(), 1, "{log}");
    assert!(list(&spool.join("maildrop")).is_empty());
    assert_queue_empty(c.dir.path());
    // And a run that was not killed picks up and delivers in one go.
    drop_one(c.dir.path());
    run_ok(&c.conf, now());
    assert_eq!(alice(c.dir.path()).len(), 2);
    assert!(alice(c.dir.path()).iter().all(|m| m.contains("Received: by mail.example.test (postern, from userid 0)")));
}

#[test]
fn a_pickup_killed_while_writing_is_redone_by_the_daemon_not_lost() {
    let server = daemon_with_maildrop("pickup");
    let (dir, conf) = (server.dir.path(), server.dir.path().join("postern.conf"));
    let spool = dir.join("spool");
    // The daemon is held so that a cron run, killed mid-pickup, leaves its draft in tmp/ for
    // the daemon's next pickup to meet (the daemon sweeps tmp/ only when it starts). The
    // drafts are named, as where anonymous files cannot be made: an anonymous one leaves
    // nothing to meet.
    let signal = |sig: &str| {
        assert!(std::process::Command::new("kill").arg(sig).arg(server.pid().to_string()).status().unwrap().success())
    };
    signal("-STOP");
    let id = drop_one(dir);
    crash_with(&conf, "pickup-draft-written", now(), &[("POSTERN_NAMED_DRAFTS", "1")]);
    assert!(spool.join("tmp").join(&id).exists(), "the killed pickup's draft");
    signal("-CONT");
    wait_gone(&spool.join("maildrop").join(&id));
    assert!(spool.join("new").join(&id).exists(), "queued by the daemon's pickup: {}", server.log());
    assert!(!spool.join("maildrop").join(&id).exists(), "{}", server.log());
    let log = run_ok(&conf, now());
    assert_eq!(alice(dir).len(), 1, "{log}");
    assert_queue_empty(dir);
}

/// A daemon started with `maildrop/` in place, as `postern-queue init` leaves it.
fn daemon_with_maildrop(tag: &str) -> Server {
    let dir = TempDir::new(tag);
    std::fs::create_dir_all(dir.path().join("spool/maildrop")).unwrap();
    let config = support::config_with(dir.path(), "");
    Server::start_in(dir, &config)
}

/// Waits (bounded) until `path` is gone.
fn wait_gone(path: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while path.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_reload_gives_the_daemons_pickup_its_new_host_name_and_size_limit() {
    let server = daemon_with_maildrop("pickup-reload");
    let (dir, conf) = (server.dir.path(), server.dir.path().join("postern.conf"));
    let spool = dir.join("spool");
    let text = std::fs::read_to_string(&conf).unwrap();
    let changed =
        text.replace("hostname = mail.example.test\n", "hostname = mx2.example.test\nmessage_size_limit = 200\n");
    assert_ne!(text, changed);
    std::fs::write(&conf, changed).unwrap();
    std::process::Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.log().contains("reloaded ") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(server.log().contains("reloaded "), "{}", server.log());
    let small = drop_one(dir);
    wait_gone(&spool.join("maildrop").join(&small));
    let queued = String::from_utf8_lossy(&std::fs::read(spool.join("new").join(&small)).unwrap()).into_owned();
    assert!(queued.contains("Received: by mx2.example.test (postern, from userid"), "{queued}");
    let big = drop_text(dir, format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(300)).as_bytes());
    wait_gone(&spool.join("maildrop").join(&big));
    assert!(spool.join("corrupt").join(format!("maildrop-{big}")).exists(), "{}", server.log());
    let log = server.log_with("over message_size_limit");
    assert!(log.contains("over message_size_limit"), "{log}");
}
