//! What the programs print and log: `--help` and `--version`, a quiet delivery run for cron,
//! priorities and facility under syslog and the journal, and logs that `pflogsumm` reads.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{SyslogSink, TempDir, config_logging_to};

const SMTPD: &str = env!("CARGO_BIN_EXE_postern-smtpd");
const DELIVER: &str = env!("CARGO_BIN_EXE_postern-deliver");

#[test]
fn help_and_version_go_to_stdout_and_exit_0() {
    for program in [SMTPD, DELIVER] {
        for flag in ["--help", "-h"] {
            let out = Command::new(program).arg(flag).output().unwrap();
            assert!(out.status.success(), "{program} {flag}: {:?}", out.status);
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: "), "{program} {flag}");
            assert!(out.stderr.is_empty());
        }
        let out = Command::new(program).arg("--version").output().unwrap();
        assert!(out.status.success());
        let name = std::path::Path::new(program).file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
        let bad = Command::new(program).arg("--bogus").output().unwrap();
        assert_eq!(bad.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown argument `--bogus`"));
    }
}

/// One SMTP session in inetd mode with `script` as the client's side; returns the replies.
fn inetd_session(conf: &std::path::Path, script: &str) -> String {
    let mut child = Command::new(SMTPD)
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
        "HELO cron.test\nMAIL FROM:<root@example.test>\nRCPT TO:<alice@example.test>\nDATA\n\
         Message-ID: <quiet.1@example.test>\nSubject: cron\n\nout\n.\nQUIT\n",
    );
    assert!(replies.contains("250 2.0.0 Ok: queued as"), "{replies}");
    let out = Command::new(DELIVER).arg("-c").arg(&conf).output().unwrap();
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
    let verbose = Command::new(DELIVER).arg("-c").arg(&conf).arg("-v").output().unwrap();
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
    let out = Command::new(DELIVER).arg("-c").arg(&conf).output().unwrap();
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
    let status = Command::new(DELIVER)
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
    // message is accepted and is gone when it is delivered (a bounce).
    let config = config_logging_to(dir.path(), &sink, "");
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
    let out = Command::new(DELIVER).arg("-c").arg(&conf).output().unwrap();
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
