//! What the programs print and log: `--help` and `--version`, a quiet delivery run for cron,
//! priorities and facility under syslog and the journal, and logs that `pflogsumm` reads.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{SyslogSink, TempDir, config_logging_to};

fn smtpd() -> std::path::PathBuf {
    support::program("postern-smtpd")
}
fn deliver() -> std::path::PathBuf {
    support::program("postern-deliver")
}

#[test]
fn help_and_version_go_to_stdout_and_exit_0() {
    for program in [smtpd(), deliver(), support::program("postern-queue")] {
        let shown = program.display();
        for flag in ["--help", "-h"] {
            let out = Command::new(&program).arg(flag).output().unwrap();
            assert!(out.status.success(), "{shown} {flag}: {:?}", out.status);
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: "), "{shown} {flag}");
            assert!(out.stderr.is_empty());
        }
        let out = Command::new(&program).arg("--version").output().unwrap();
        assert!(out.status.success());
        let name = program.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
        let bad = Command::new(&program).arg("--bogus").output().unwrap();
        assert_eq!(bad.status.code(), Some(2));
        // "unknown argument" or, for postern-queue, "unknown command".
        let said = String::from_utf8_lossy(&bad.stderr);
        assert!(said.contains("unknown ") && said.contains(" `--bogus`"), "{shown}: {said}");
    }
}

/// The one program the three names link to, run under a name of its own, says which to use
/// and does nothing else.
#[test]
fn the_program_under_another_name_says_which_names_it_has() {
    let out = Command::new(env!("CARGO_BIN_EXE_postern")).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("postern-smtpd, postern-deliver or postern-queue"), "{said}");
}

/// One SMTP session in inetd mode with `script` as the client's side; returns the replies.
fn inetd_session(conf: &std::path::Path, script: &str) -> String {
    let mut child = Command::new(smtpd())
        .args(["--inetd", "-c"])
        .arg(conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.replace('\n', "\r\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_normal_delivery_run_prints_nothing_and_logs_to_syslog() {
    let dir = TempDir::new("quiet");
    let sink = SyslogSink::bind(dir.path());
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, config_logging_to(dir.path(), &sink, "")).unwrap();
    let replies = inetd_session(
        &conf,
        "HELO cron.test\nMAIL FROM:<root@remote.test>\nRCPT TO:<alice@example.test>\nDATA\n\
         Message-ID: <quiet.1@example.test>\nSubject: cron\n\nout\n.\nQUIT\n",
    );
    assert!(replies.contains("250 2.0.0 Ok: queued as"), "{replies}");
    let out = Command::new(deliver()).arg("-c").arg(&conf).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "a cron run must print nothing");
    assert!(out.stdout.is_empty());
    let lines = sink.lines();
    let delivered = lines.iter().find(|l| l.contains("to=<alice@example.test>")).expect("the delivery is logged");
    assert!(delivered.starts_with("<22>postern/deliver["), "{delivered}");
    assert!(delivered.contains("status=sent"), "{delivered}");
    assert!(
        lines.iter().any(|l| l.starts_with("<22>postern/smtpd[") && l.ends_with("message-id=<quiet.1@example.test>"))
    );

    // -v shows every line on stderr as well.
    let again = inetd_session(&conf, "HELO a\nMAIL FROM:<>\nRCPT TO:<alice@example.test>\nDATA\nx\n.\nQUIT\n");
    assert!(again.contains("queued as"));
    let verbose = Command::new(deliver()).arg("-c").arg(&conf).arg("-v").output().unwrap();
    assert!(String::from_utf8_lossy(&verbose.stderr).contains("status=sent"));
}

/// A configuration logging to a syslog sink whose spool cannot be made (a file stands where
/// its directory would be), so that postern-deliver fails at start.
fn broken_spool(tag: &str) -> (TempDir, SyslogSink, std::path::PathBuf) {
    let dir = TempDir::new(tag);
    let sink = SyslogSink::bind(dir.path());
    let conf = dir.path().join("postern.conf");
    std::fs::write(dir.path().join("spool"), b"not a directory").unwrap();
    std::fs::write(&conf, config_logging_to(dir.path(), &sink, "")).unwrap();
    (dir, sink, conf)
}

#[test]
fn errors_reach_stderr_and_syslog_at_error_priority() {
    let (_dir, sink, conf) = broken_spool("fatal");
    let out = Command::new(deliver()).arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("postern/deliver[") && stderr.contains("error: spool"), "{stderr}");
    let lines = sink.lines();
    assert!(lines.iter().any(|l| l.starts_with("<19>postern/deliver[") && l.contains("error: spool")), "{lines:?}");
}

#[test]
fn under_the_journal_lines_carry_a_priority_and_no_second_tag() {
    use std::os::unix::fs::MetadataExt;
    let (dir, sink, conf) = broken_spool("journal");
    // The journal's stream is what stderr is connected to; here a file named by JOURNAL_STREAM.
    let stream_path = dir.path().join("stream");
    let stream = std::fs::File::create(&stream_path).unwrap();
    let meta = stream.metadata().unwrap();
    let status = Command::new(deliver())
        .arg("-c")
        .arg(&conf)
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(stream)
        .status()
        .unwrap();
    assert!(!status.success());
    let text = std::fs::read_to_string(&stream_path).unwrap();
    assert!(text.starts_with("<3>error: spool"), "{text}");
    assert!(!text.contains("postern/deliver["), "the journal adds the tag itself: {text}");
    assert!(sink.lines().is_empty(), "nothing goes to syslog under the journal");
}

/// Lines as a syslog daemon writes them to /var/log/mail.log: a time and a host name first.
fn as_mail_log(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| {
            let text = l.split_once('>').map_or(l.as_str(), |(_, rest)| rest);
            format!("Dec  2 10:00:00 mail {text}\n")
        })
        .collect()
}

fn count(report: &str, what: &str) -> Option<u64> {
    report.lines().find(|l| l.split_whitespace().nth(1) == Some(what))?.split_whitespace().next()?.parse().ok()
}

#[test]
fn pflogsumm_counts_what_happened() {
    if support::skip_unless(support::have("pflogsumm"), "pflogsumm is not installed") {
        return;
    }
    let dir = TempDir::new("pflogsumm");
    let sink = SyslogSink::bind(dir.path());
    let conf = dir.path().join("postern.conf");
    let d = dir.path().display();
    // alice delivers; carol's maildir is a file (a temporary failure); bob exists when the
    // message is accepted and is gone when it is delivered (a bounce). alice sends over a
    // pipe (no address, so no trust): the guard for our own domains is off here.
    let config = config_logging_to(dir.path(), &sink, "reject_local_senders = off\n");
    std::fs::write(&conf, config.replace(&format!("mailboxes = {d}/mailboxes\n"), &format!("mailboxes = {d}/users\n")))
        .unwrap();
    let users = format!("alice: {d}/maildirs/alice/\nbob: {d}/maildirs/bob/\ncarol: {d}/carol-file/\n");
    std::fs::write(dir.path().join("users"), users).unwrap();
    std::fs::write(dir.path().join("carol-file"), b"").unwrap();
    let replies = inetd_session(
        &conf,
        "EHLO client.test\nMAIL FROM:<alice@example.test>\nRCPT TO:<nobody@example.test>\n\
         RCPT TO:<someone@remote.test>\nRCPT TO:<alice@example.test>\nRCPT TO:<bob@example.test>\n\
         RCPT TO:<carol@example.test>\nDATA\nMessage-ID: <sum.1@example.test>\nSubject: s\n\nbody\n.\nQUIT\n",
    );
    assert!(replies.contains("550 5.1.1") && replies.contains("554 5.7.1") && replies.contains("queued as"));
    std::fs::write(dir.path().join("users"), format!("alice: {d}/maildirs/alice/\ncarol: {d}/carol-file/\n")).unwrap();
    let out = Command::new(deliver()).arg("-c").arg(&conf).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log_file = dir.path().join("mail.log");
    std::fs::write(&log_file, as_mail_log(&sink.lines())).unwrap();
    let report = Command::new("pflogsumm").arg("--syslog-name=postern").arg(&log_file).output().unwrap();
    let report = String::from_utf8_lossy(&report.stdout).to_string();
    let log = std::fs::read_to_string(&log_file).unwrap();
    // The message from the client; alice's copy and the bounce report to her are delivered.
    assert_eq!(count(&report, "received"), Some(1), "{report}\n{log}");
    assert_eq!(count(&report, "delivered"), Some(2), "{report}\n{log}");
    assert_eq!(count(&report, "deferred"), Some(1), "{report}\n{log}");
    assert_eq!(count(&report, "bounced"), Some(1), "{report}\n{log}");
    assert_eq!(count(&report, "rejected"), Some(2), "{report}\n{log}");
}

/// A day of the daemon in the foreground (`make run`), with instant delivery: its own lines
/// and those of the delivery children it starts reach its stderr, each whole, and pflogsumm
/// counts what was received, delivered and rejected. Then the same under syslog.
#[test]
fn the_daemons_children_log_where_it_does() {
    let dir = TempDir::new("foreground");
    let config = support::instant(&support::config_with(dir.path(), ""));
    let server = support::Server::start_in(dir, &config);
    let mut c = support::Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    c.open_data("someone@remote.test", &["alice@example.test"]);
    assert!(c.mail_text(b"Subject: one\r\n\r\nx").starts_with("250 "));
    c.cmd("MAIL FROM:<someone@remote.test>");
    assert!(c.cmd("RCPT TO:<nobody@example.test>").starts_with("550 5.1.1"));
    c.cmd("QUIT");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !server.log().contains("status=sent") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A message handed to sendmail, whose pickup line is counted as received too.
    let conf = server.dir.path().join("postern.conf");
    let mut sendmail = Command::new(env!("CARGO_BIN_EXE_postern-sendmail"));
    sendmail.arg("-C").arg(&conf).arg("alice").stdin(Stdio::piped()).stderr(Stdio::piped());
    let mut child = sendmail.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"Subject: two\n\nfrom cron\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let pickup = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success() && pickup.starts_with("postern/pickup["), "{pickup}");
    // Instant delivery takes the second message too; the count below waits for it rather
    // than racing it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.log().matches("status=sent").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log() + "\n" + pickup.trim_end();
    let sent = log.lines().find(|l| l.contains("status=sent")).unwrap_or_else(|| panic!("no delivery line: {log}"));
    assert!(sent.starts_with("postern/deliver[") && sent.contains("to=<alice@example.test>"), "{sent}");
    let tagged = |l: &&str| l.starts_with("postern/") && l.split_once("]: ").is_some();
    assert!(log.lines().all(|l| tagged(&l)), "every line whole and tagged: {log}");
    if !support::skip_unless(support::have("pflogsumm"), "pflogsumm is not installed") {
        let lines: Vec<String> = log.lines().map(|l| format!("<22>{l}")).collect();
        let log_file = server.dir.path().join("mail.log");
        std::fs::write(&log_file, as_mail_log(&lines)).unwrap();
        let report = Command::new("pflogsumm").arg("--syslog-name=postern").arg(&log_file).output().unwrap();
        let report = String::from_utf8_lossy(&report.stdout).to_string();
        assert_eq!(count(&report, "received"), Some(2), "{report}\n{log}");
        assert_eq!(count(&report, "delivered"), Some(2), "{report}\n{log}");
        assert_eq!(count(&report, "rejected"), Some(1), "{report}\n{log}");
    }
    drop(server);

    // Under syslog (an inetd session here), the children's lines reach the same socket.
    let dir = TempDir::new("syslog-children");
    let sink = SyslogSink::bind(dir.path());
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, support::instant(&config_logging_to(dir.path(), &sink, "log = syslog\n"))).unwrap();
    let replies = inetd_session(
        &conf,
        "HELO a\nMAIL FROM:<someone@remote.test>\nRCPT TO:<alice@example.test>\nDATA\nx\n.\nQUIT\n",
    );
    assert!(replies.contains("queued as"), "{replies}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("status=sent")) && std::time::Instant::now() < deadline {
        lines = sink.lines();
    }
    let sent = lines.iter().find(|l| l.contains("status=sent")).unwrap_or_else(|| panic!("{lines:?}"));
    assert!(sent.starts_with("<22>postern/deliver["), "{sent}");
}

/// Under the journal, the daemon and the delivery children it starts write to the journal's
/// own socket, each line under its own program's tag. The journal here is a socket the test
/// binds, put where the journal's is in a mount namespace of the daemon's own.
#[test]
fn under_the_journal_each_program_keeps_its_own_tag() {
    if support::skip_unless_root("mount a stand-in for the journal's socket")
        || support::skip_unless(support::have("unshare"), "unshare is missing")
    {
        return;
    }
    let dir = TempDir::new("journal-native");
    let journal_dir = dir.path().join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let socket = std::os::unix::net::UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let conf = dir.path().join("postern.conf");
    let config = support::instant(&support::config_with(dir.path(), "")).replace("log = stderr\n", "");
    std::fs::write(&conf, config).unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && mount --bind {} /run/systemd/journal && \
         JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec {} -c {}",
        journal_dir.display(),
        smtpd().display(),
        conf.display()
    );
    let mut daemon = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut datagrams: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 8192];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut receive = |until: &dyn Fn(&[String]) -> bool, datagrams: &mut Vec<String>| {
        while !until(datagrams) && std::time::Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                datagrams.push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        }
    };
    receive(&|d| d.iter().any(|g| g.contains("listening on")), &mut datagrams);
    let listening = datagrams.iter().find(|g| g.contains("listening on")).cloned();
    let Some(listening) = listening else {
        let _ = daemon.kill();
        let out = daemon.wait_with_output().unwrap();
        panic!("{datagrams:?} {}", String::from_utf8_lossy(&out.stderr));
    };
    assert!(listening.contains("SYSLOG_IDENTIFIER=postern/smtpd\n") && listening.contains("PRIORITY=6\n"));
    let addr: std::net::SocketAddr =
        listening.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let mut c = support::Client::greeted(addr);
    c.cmd("EHLO client.test");
    c.open_data("someone@remote.test", &["alice@example.test"]);
    assert!(c.mail_text(b"Subject: journal\r\n\r\nx").starts_with("250 "));
    c.cmd("QUIT");
    receive(&|d| d.iter().any(|g| g.contains("status=sent")), &mut datagrams);
    let _ = daemon.kill();
    let out = daemon.wait_with_output().unwrap();
    let sent = datagrams.iter().find(|g| g.contains("status=sent"));
    let sent = sent.unwrap_or_else(|| panic!("{datagrams:?} {}", String::from_utf8_lossy(&out.stderr)));
    assert!(sent.contains("SYSLOG_IDENTIFIER=postern/deliver\n") && sent.contains("SYSLOG_FACILITY=2\n"), "{sent}");
    assert!(out.stderr.is_empty(), "nothing on the stream: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn lines_of_sessions_logging_at_once_stay_whole_and_name_the_daemon() {
    let dir = TempDir::new("many-at-once");
    let config = support::config_with(dir.path(), "max_per_ip = 100\n");
    let server = support::Server::start_in(dir, &config);
    const SESSIONS: usize = 40;
    std::thread::scope(|scope| {
        for n in 0..SESSIONS {
            let addr = server.addr;
            scope.spawn(move || {
                let mut c = support::Client::greeted(addr);
                c.cmd(&format!("EHLO client{n}.test"));
                assert!(c.cmd("MAIL FROM:<x@remote.test>").starts_with("250"));
                assert!(c.cmd("RCPT TO:<nobody@example.test>").starts_with("550 5.1.1"));
                c.cmd("QUIT");
            });
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.log().matches("disconnect from").count() < SESSIONS && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.log();
    let tag = format!("postern/smtpd[{}]: ", server.pid());
    assert!(log.lines().all(|l| l.starts_with(&tag)), "every line whole, tagged {tag}: {log}");
    for what in [": connect from", "NOQUEUE: reject: RCPT", ": disconnect from"] {
        assert_eq!(log.matches(what).count(), SESSIONS, "{what}: {log}");
    }
}
