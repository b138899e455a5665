//! postern-sendmail as the programs of a small server call it (cron, mail(1), PHP, git
//! send-email, msmtp-style scripts), an unprivileged user through maildrop/, and
//! postern-queue on a queue that holds deferred mail. Each message is followed to a maildir.

mod support;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use support::{Account, TempDir, deliver, have, maildir, skip_unless, skip_unless_root};

const SENDMAIL: &str = env!("CARGO_BIN_EXE_postern-sendmail");
fn queue_program() -> std::path::PathBuf {
    support::program("postern-queue")
}

/// The base configuration with local users alice and bob, and root and postmaster aliased
/// to alice (`root` alone is local: hostname mail.example.test, local domain example.test).
fn setup(tag: &str, extra: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(tag);
    let conf = dir.path().join("postern.conf");
    std::fs::write(&conf, support::config_with(dir.path(), extra)).unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("mailboxes"), format!("alice: {d}/maildirs/alice/\nbob: {d}/maildirs/bob/\n"))
        .unwrap();
    std::fs::write(dir.path().join("aliases"), "root: alice\npostmaster: alice\n").unwrap();
    (dir, conf)
}

fn sendmail(conf: &Path, args: &[&str], input: &[u8]) -> Output {
    run(Command::new(SENDMAIL).args(args).env("POSTERN_CONF", conf), input)
}

fn run(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // A program that refuses before reading its input may be gone already: not an error here.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn mailbox(dir: &Path, user: &str) -> Vec<String> {
    maildir(&dir.join("maildirs").join(user))
}

fn field<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    let head = message.split("\n\n").next().unwrap_or("");
    head.split('\n')
        .filter_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
        .collect()
}

#[test]
fn cron_output_reaches_roots_alias_with_the_fields_it_lacked() {
    let (dir, conf) = setup("cron", "");
    // What cron writes to `sendmail -FCronDaemon -i -B8BITMIME -oem root`.
    let job = b"From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@vm> echo hi\n\
        MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\
        X-Cron-Env: <SHELL=/bin/sh>\n\nhi\n.\nstill the job's output\n";
    let out = sendmail(&conf, &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], job);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stdout.is_empty(), "cron mails whatever is printed: {}", text(&out));
    deliver(&conf, None, &[]);
    let got = mailbox(dir.path(), "alice");
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert!(m.starts_with("Return-Path: <root@example.test>\n"), "{m}");
    assert_eq!(field(m, "From"), ["root (Cron Daemon)"], "a From: there is kept");
    assert_eq!(field(m, "Date").len(), 1, "{m}");
    assert!(field(m, "Message-ID")[0].ends_with("@mail.example.test>"), "{m}");
    assert!(m.contains("Received: by mail.example.test (postern, from userid 0)\n"), "{m}");
    assert!(m.ends_with("\nhi\n.\nstill the job's output\n"), "-i keeps the dot line: {m}");
}

#[test]
fn mail_s_from_bsd_mailx_is_delivered() {
    if skip_unless(have("bsd-mailx"), "bsd-mailx is not installed") {
        return;
    }
    let (dir, conf) = setup("mailx", "");
    let rc = dir.path().join("mailrc");
    std::fs::write(&rc, format!("set sendmail={SENDMAIL}\n")).unwrap();
    let mut mail = Command::new("bsd-mailx");
    mail.args(["-s", "disk space", "bob"]).env("MAILRC", &rc).env("HOME", dir.path()).env("POSTERN_CONF", &conf);
    let out = run(&mut mail, b"the disk is 91% full\n");
    assert!(out.status.success(), "{}", text(&out));
    deliver(&conf, None, &[]);
    let got = mailbox(dir.path(), "bob");
    assert_eq!(got.len(), 1, "{}", text(&out));
    assert_eq!(field(&got[0], "Subject"), ["disk space"]);
    assert_eq!(field(&got[0], "From"), ["root <root@example.test>"], "added: the full name and login of the caller");
    assert!(got[0].ends_with("\n\nthe disk is 91% full\n"), "{}", got[0]);
}

#[test]
fn php_mail_with_t_and_i_reads_the_header_and_drops_bcc() {
    if skip_unless(have("php"), "php is not installed") {
        return;
    }
    let (dir, conf) = setup("php", "");
    let script = r#"$ok = mail("alice@example.test", "order 42", "Thanks.\n.\nA line with a dot above.",
        "From: shop@example.test\r\nBcc: bob@example.test"); exit($ok ? 0 : 1);"#;
    let mut php = Command::new("php");
    php.args(["-d", &format!("sendmail_path={SENDMAIL} -t -i"), "-r", script]).env("POSTERN_CONF", &conf);
    let out = run(&mut php, b"");
    assert!(out.status.success(), "{}", text(&out));
    deliver(&conf, None, &[]);
    for user in ["alice", "bob"] {
        let got = mailbox(dir.path(), user);
        assert_eq!(got.len(), 1, "{user}");
        assert_eq!(field(&got[0], "Subject"), ["order 42"]);
        assert!(field(&got[0], "Bcc").is_empty(), "Bcc: is removed: {}", got[0]);
        assert!(got[0].contains("Thanks.\n.\nA line with a dot above."), "{}", got[0]);
    }
}

#[test]
fn git_send_email_hands_its_patch_to_sendmail() {
    if skip_unless(have("git") && git_send_email_works(), "git send-email is not installed") {
        return;
    }
    let (dir, conf) = setup("git", "");
    let repo = dir.path().join("repo");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("HOME", dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("POSTERN_CONF", &conf)
            .env("GIT_AUTHOR_NAME", "A U Thor")
            .env("GIT_AUTHOR_EMAIL", "author@example.test")
            .env("GIT_COMMITTER_NAME", "A U Thor")
            .env("GIT_COMMITTER_EMAIL", "author@example.test")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        text(&out)
    };
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"]);
    std::fs::write(repo.join("README"), "hello\n").unwrap();
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "Add a README"]);
    git(&["format-patch", "-1", "-o", "out"]);
    git(&[
        "send-email",
        "--quiet",
        "--confirm=never",
        "--suppress-cc=all",
        &format!("--sendmail-cmd={SENDMAIL}"),
        "--from=A U Thor <author@example.test>",
        "--to=bob@example.test",
        "out",
    ]);
    deliver(&conf, None, &[]);
    let got = mailbox(dir.path(), "bob");
    assert_eq!(got.len(), 1);
    assert_eq!(field(&got[0], "Subject"), ["[PATCH] Add a README"]);
    assert_eq!(field(&got[0], "Message-ID").len(), 1, "git's own Message-ID, not a second: {}", got[0]);
    assert!(!field(&got[0], "Message-ID")[0].contains("mail.example.test"), "{}", got[0]);
    assert!(got[0].contains("+hello"), "{}", got[0]);
}

fn git_send_email_works() -> bool {
    Command::new("git")
        .args(["send-email", "--help"])
        .output()
        .is_ok_and(|o| !text(&o).contains("is not a git command"))
}

#[test]
fn an_envelope_sender_from_f_and_a_lone_dot_without_i() {
    let (dir, conf) = setup("sender", "");
    let out =
        sendmail(&conf, &["-f", "list-bounces@remote.test", "alice@example.test"], b"Subject: a\n\nfirst\n.\nlost\n");
    assert!(out.status.success(), "{}", text(&out));
    let out = sendmail(&conf, &["-f", "", "-oi", "bob"], b"Subject: b\n\nnull sender\n");
    assert!(out.status.success(), "{}", text(&out));
    deliver(&conf, None, &[]);
    let alice = mailbox(dir.path(), "alice");
    assert_eq!(alice.len(), 1);
    assert!(alice[0].starts_with("Return-Path: <list-bounces@remote.test>\n"), "{}", alice[0]);
    assert!(alice[0].ends_with("\n\nfirst\n"), "without -i a lone dot ends the message: {}", alice[0]);
    let bob = mailbox(dir.path(), "bob");
    assert!(bob[0].starts_with("Return-Path: <>\n"), "{}", bob[0]);
}

#[test]
fn bad_input_gets_its_sysexits_code_and_queues_nothing() {
    let (dir, conf) = setup("exits", "message_size_limit = 1k\n");
    let cases: &[(&[&str], &[u8], i32, &str)] = &[
        (&[], b"Subject: x\n\nno one\n", 64, "no recipients"),
        (&["-t"], b"Subject: x\n\nno one\n", 65, "no recipient addresses found in the header"),
        (&["bad address@@example.test"], b"x\n", 65, "bad address"),
        (&["alice@example.test"], &[b'a'; 2000], 65, "larger than message_size_limit"),
        (&["-bd"], b"", 64, "postern-smtpd"),
        (&["-Z", "alice"], b"", 64, "unknown flag -Z"),
    ];
    for (args, input, code, says) in cases {
        let out = sendmail(&conf, args, input);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert!(support::waiting(&dir.path().join("spool")).is_empty());
    let help = Command::new(SENDMAIL).arg("--help").output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("-bs"));
}

#[test]
fn bs_is_an_smtp_session_for_the_local_user() {
    let (dir, conf) = setup("bs", "");
    let dialogue = b"EHLO localhost\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\n\
        RCPT TO:<someone@remote.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n";
    let out = sendmail(&conf, &["-bs"], dialogue);
    let replies = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(replies.starts_with("220 mail.example.test ESMTP"), "{replies}");
    assert!(!replies.contains("STARTTLS"), "{replies}");
    let codes: Vec<&str> = replies.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| &l[..3]).collect();
    // The local user may send anywhere (as `sendmail addr` may); unknown local users are refused.
    assert_eq!(codes, ["220", "250", "250", "250", "250", "550", "354", "250", "221"], "{replies}");
    deliver(&conf, None, &[]);
    assert_eq!(mailbox(dir.path(), "bob").len(), 1);
}

#[test]
fn q_runs_delivery_and_newaliases_checks_the_file() {
    let (dir, conf) = setup("q", "");
    assert!(sendmail(&conf, &["alice"], b"Subject: q\n\nnow\n").status.success());
    let out = sendmail(&conf, &["-q"], b"");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mailbox(dir.path(), "alice").len(), 1, "{}", text(&out));
    let newaliases = dir.path().join("newaliases");
    std::os::unix::fs::symlink(SENDMAIL, &newaliases).unwrap();
    let out = run(Command::new(&newaliases).env("POSTERN_CONF", &conf), b"");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("aliases: 2 aliases"), "{}", text(&out));
    std::fs::write(dir.path().join("aliases"), "root alice\n").unwrap();
    let out = run(Command::new(&newaliases).env("POSTERN_CONF", &conf), b"");
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(text(&out).contains("aliases:1"), "names the file and line: {}", text(&out));
    // Keys by full address or by domain in a domain that is not ours would never be looked
    // up: said, with their lines, by newaliases and by --check.
    let aliases = "root: alice\nbob@elsewhere.test: alice\n@elsewhere.test: alice\nann@example.test: alice\n";
    std::fs::write(dir.path().join("aliases"), aliases).unwrap();
    let out = run(Command::new(&newaliases).env("POSTERN_CONF", &conf), b"");
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    for line in [
        "aliases:2: `bob@elsewhere.test`: elsewhere.test is not one of local_domains",
        "aliases:3: `@elsewhere.test`: elsewhere.test is not one of local_domains",
    ] {
        assert!(text(&out).contains(line), "{line}: {}", text(&out));
    }
    assert!(!text(&out).contains("aliases:4"), "a key in our own domain is fine: {}", text(&out));
    let check = Command::new(support::program("postern-deliver")).arg("-c").arg(&conf).arg("--check").output().unwrap();
    assert!(!check.status.success() && text(&check).contains("aliases:2: "), "{}", text(&check));
    // A file-level problem names no line 0.
    std::fs::remove_file(dir.path().join("aliases")).unwrap();
    let out = run(Command::new(&newaliases).env("POSTERN_CONF", &conf), b"");
    assert!(!out.status.success() && text(&out).contains("aliases: No such file or directory"), "{}", text(&out));
}

/// `mailq | head` and the like: a reader that stops early ends the listing quietly, never
/// with a panic (exit 101) on the closed pipe.
#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    let (_dir, conf) = setup("pipe", "");
    assert!(sendmail(&conf, &["bob@remote.test"], b"Subject: waits\n\nx\n").status.success());
    let (queue, deliver) = (queue_program(), support::program("postern-deliver"));
    let mailq = [Path::new(SENDMAIL), Path::new("-bp")];
    let list = [&queue, Path::new("list")];
    let dry_run = [&deliver, Path::new("--dry-run")];
    for argv in [&mailq[..], &list[..], &dry_run[..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut command = Command::new(argv[0]);
        let out = command.args(&argv[1..]).env("POSTERN_CONF", &conf).stdout(writer).stderr(Stdio::piped()).output();
        let out = out.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() != Some(101) && !stderr.contains("panicked"), "{argv:?}: {:?} {stderr}", out.status);
    }
}

#[test]
fn the_queue_tools_on_deferred_mail() {
    // The DNS port is closed: remote mail is deferred with a reason.
    let (dir, conf) = setup("queue", "");
    let out = sendmail(&conf, &["-f", "alice@example.test", "carol@remote.test"], b"Subject: far\n\naway\n");
    assert!(out.status.success(), "{}", text(&out));
    deliver(&conf, None, &[]);
    let queue = |args: &[&str]| {
        let out = Command::new(queue_program()).arg("-c").arg(&conf).args(args).output().unwrap();
        (out.status.code(), text(&out))
    };
    let (code, list) = queue(&["list"]);
    assert_eq!(code, Some(0), "{list}");
    let line = list.lines().nth(1).unwrap_or_default().to_string();
    let id = line.split_whitespace().next().unwrap_or_default().to_string();
    assert!(line.contains(" waiting ") && line.contains("<alice@example.test> -> <carol@remote.test>"), "{list}");
    assert!(list.contains("    last error: 4."), "the reason is shown: {list}");
    let (_, json) = queue(&["list", "--json"]);
    assert!(
        json.contains(&format!("\"id\": \"{id}\", \"state\": \"waiting\"")) && json.contains("\"attempts\": 1"),
        "{json}"
    );
    let mailq = dir.path().join("mailq");
    std::os::unix::fs::symlink(SENDMAIL, &mailq).unwrap();
    let out = run(Command::new(&mailq).env("POSTERN_CONF", &conf), b"");
    let shown = text(&out);
    assert!(shown.starts_with("-Queue ID-") && shown.contains(&id) && shown.contains("\n(4."), "{shown}");
    assert!(shown.contains("carol@remote.test\n") && shown.contains("in 1 Request."), "{shown}");
    let (code, show) = queue(&["show", &id]);
    assert_eq!(code, Some(0));
    assert!(
        show.contains("state: waiting")
            && show.contains(" deferred <carol@remote.test> 4.")
            && show.contains("Subject: far"),
        "{show}"
    );

    assert_eq!(queue(&["hold", &id]).0, Some(0));
    assert!(queue(&["list"]).1.contains(" held "));
    let (code, says) = queue(&["requeue", &id]);
    assert_eq!(code, Some(0), "{says}");
    assert!(says.starts_with(&format!("{id}: requeued (still held)\n")), "{says}");
    assert!(dir.path().join("spool/hold").join(&id).exists());
    let (status, log) = support::deliver_with(&conf, &[], &["--id", &id]);
    assert!(!status.success() && log.contains("held"), "{log}");
    let (code, says) = queue(&["retry", &id]);
    assert_eq!(code, Some(1), "{says}");
    assert!(says.contains("held (release it first)"), "{says}");
    let (code, says) = queue(&["release", &id]);
    assert_eq!(code, Some(0), "{says}");
    assert!(says.contains("released (waiting)"), "{says}");
    let (code, says) = queue(&["retry", &id]);
    assert_eq!(code, Some(0), "{says}");
    assert!(says.contains("1 deferred"), "tried again at once, back-off or not: {says}");
    assert!(queue(&["list", "--json"]).1.contains("\"attempts\": 2"));
    assert_eq!(queue(&["delete", &id]).0, Some(0));
    assert_eq!(queue(&["list"]).1, "the queue is empty\n");
    assert!(!dir.path().join("spool/cur").join(format!("{id}.log")).exists());
    for action in ["show", "hold", "release", "delete", "retry", "requeue"] {
        let (code, says) = queue(&[action, &id]);
        assert_eq!(code, Some(1), "{action}: {says}");
        assert!(says.contains("no such message"), "{action}: {says}");
    }
    let (status, log) = support::deliver_with(&conf, &[], &["--id", &id]);
    assert!(!status.success() && log.contains("no such message"), "{log}");
}

/// `hold`, `release` and `delete` on many messages at once, as `postsuper -h ALL` and
/// `postsuper -d -` do: `ALL` takes every message the command applies to, `-` the IDs on
/// standard input; one that cannot be done is said, the others are still done.
#[test]
fn the_queue_tools_on_all_messages_and_on_ids_from_standard_input() {
    let (dir, conf) = setup("queue-all", "");
    for n in 0..3 {
        let out = sendmail(&conf, &["carol@remote.test"], format!("Subject: {n}\n\nx\n").as_bytes());
        assert!(out.status.success(), "{}", text(&out));
    }
    let queue = |args: &[&str], input: &str| {
        let out = run(Command::new(queue_program()).arg("-c").arg(&conf).args(args), input.as_bytes());
        (out.status.code(), text(&out))
    };
    let spool = dir.path().join("spool");
    let ids: Vec<String> = support::list(&spool.join("new"))
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let (code, says) = queue(&["hold", "ALL"], "");
    assert_eq!(code, Some(0), "{says}");
    assert_eq!(says.lines().filter(|l| l.ends_with(": held")).count(), 3, "{says}");
    assert_eq!(support::list(&spool.join("hold")).len(), 3);
    // Never tried: requeue ALL has nothing to do, and requeue of one says why.
    assert_eq!(queue(&["requeue", "ALL"], ""), (Some(0), String::new()));
    let (code, says) = queue(&["requeue", &ids[0]], "");
    assert_eq!(code, Some(1), "{says}");
    assert!(says.contains("never tried yet"), "{says}");
    // Held already: hold ALL finds nothing more to do.
    let (code, says) = queue(&["hold", "ALL"], "");
    assert_eq!(code, Some(0), "{says}");
    assert!(!says.contains(": held"), "{says}");
    // Two IDs on standard input, and one that is no longer there: the two are released.
    let (code, says) = queue(&["delete", &ids[2]], "");
    assert_eq!(code, Some(0), "{says}");
    let (code, says) = queue(&["release", "-"], &format!("{}\n{} {}\n", ids[0], ids[2], ids[1]));
    assert_eq!(code, Some(1), "{says}");
    assert!(
        says.contains(&format!("{}: no such message", ids[2])) && says.contains("1 of 3 messages not released"),
        "{says}"
    );
    assert_eq!(says.matches("released (new)").count(), 2, "{says}");
    assert_eq!(support::list(&spool.join("new")).len(), 2);
    let (code, says) = queue(&["release", "-"], "not-an-id\n");
    assert_eq!(code, Some(2), "{says}");
    // Several IDs on the command line.
    let (code, says) = queue(&["hold", &ids[0], &ids[1]], "");
    assert_eq!(code, Some(0), "{says}");
    let (code, says) = queue(&["delete", "ALL"], "");
    assert_eq!(code, Some(0), "{says}");
    assert_eq!(says.lines().filter(|l| l.ends_with(": deleted")).count(), 2, "{says}");
    assert_eq!(queue(&["list"], "").1, "the queue is empty\n");
}

/// `flush` delivers every message now, whatever the back-off; on a terminal it shows how far
/// it has come as it goes, off one it says only what it did.
#[test]
fn flush_delivers_everything_now_and_shows_its_progress_on_a_terminal() {
    if skip_unless(have("script"), "script(1) is not installed (util-linux)") {
        return;
    }
    // The DNS port is closed: each try defers.
    let (_dir, conf) = setup("flush", "");
    for n in 0..3 {
        let out = sendmail(&conf, &["carol@remote.test"], format!("Subject: {n}\n\nx\n").as_bytes());
        assert!(out.status.success(), "{}", text(&out));
    }
    deliver(&conf, None, &[]);
    let out = Command::new(queue_program()).arg("-c").arg(&conf).arg("flush").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3 messages: 0 sent, 3 deferred, 0 bounced, 0 busy\n");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("flush: "), "{}", text(&out));
    // script(1) runs it on a terminal of its own, and copies what it shows.
    let command = format!("{} -c {} flush", queue_program().display(), conf.display());
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("\r\x1b[Kflush: 3 of 3 messages: 0 sent, 3 deferred, 0 bounced\r\n"), "{shown:?}");
    assert!(shown.contains("3 messages: 0 sent, 3 deferred, 0 bounced, 0 busy"), "{shown:?}");
    let attempts = Command::new(queue_program()).arg("-c").arg(&conf).args(["list", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&attempts.stdout).matches("\"attempts\": 3").count(), 3);
}

/// `sendmail -bv`: where mail to each address would go (a maildir, each place an alias
/// leads, a remote address's MX hosts in the order they would be tried) or why it cannot,
/// and nothing is queued or sent; exit 0 only when every address can be delivered.
#[test]
fn bv_says_where_mail_would_go_and_sends_nothing() {
    use hickory_proto::rr::RecordType::{A, MX};
    use support::dns::{Answer, FakeDns};
    // nowhere.test has no record at all: NXDOMAIN.
    let dns = FakeDns::start(&[
        ("far.test", MX, Answer::Mx(vec![(20, "mx2.far.test"), (10, "mx1.far.test")])),
        ("mx1.far.test", A, Answer::Ip(vec!["127.0.0.2"])),
        ("mx2.far.test", A, Answer::Ip(vec!["127.0.0.3"])),
    ]);
    let (dir, conf) = setup("verify", &format!("dns_servers = {}\n", dns.addr));
    std::fs::write(dir.path().join("aliases"), "postmaster: alice\nstaff: alice, carol@far.test\n").unwrap();
    let d = dir.path().display();
    let out = sendmail(&conf, &["-bv", "alice", "staff@example.test"], b"");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        said,
        format!(
            "alice: deliverable: maildir {d}/maildirs/alice/\n\
             staff@example.test: deliverable: maildir {d}/maildirs/alice/\n\
             staff@example.test: deliverable: carol@far.test by mx1.far.test[127.0.0.2]:25, mx2.far.test[127.0.0.3]:25\n"
        )
    );
    let out = sendmail(&conf, &["-bv", "bob", "nobody@example.test", "someone@nowhere.test"], b"");
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(67), "{}", text(&out));
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], format!("bob: deliverable: maildir {d}/maildirs/bob/"), "{said}");
    assert!(lines[1].starts_with("nobody@example.test: undeliverable: 5.1.1 "), "{said}");
    assert!(lines[2].starts_with("someone@nowhere.test: undeliverable: someone@nowhere.test: 5.1.2 "), "{said}");
    assert_eq!(lines.len(), 3, "{said}");
    assert!(support::list(&dir.path().join("spool/new")).is_empty(), "nothing is queued");
    assert!(!dir.path().join("maildirs/alice").exists(), "nothing is delivered");
}

fn add_user(name: &str) -> Account {
    let out = Command::new("useradd").args(["--no-create-home", "--shell", "/bin/false", name]).output().unwrap();
    assert!(out.status.success(), "useradd {name}: {}", text(&out));
    Account { user: name.to_string(), groups: Vec::new() }
}

fn ids(name: &str) -> (u32, u32) {
    let ids = postern::sys::lookup_user(name).unwrap().unwrap();
    (ids.uid, ids.gid)
}

#[test]
fn an_unprivileged_user_sends_through_maildrop() {
    if skip_unless_root("create users and a setgid program") || skip_unless(have("setpriv"), "setpriv is missing") {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (service, sender_name, group) = (format!("pstn-s{tag}"), format!("pstn-u{tag}"), format!("pstn-d{tag}"));
    let (dir, conf) = setup("maildrop", &format!("user = {service}\n"));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let setgid_copy = bin.join("postern-sendmail");
    std::fs::copy(SENDMAIL, &setgid_copy).unwrap();
    let plain_copy = bin.join("plain-sendmail");
    std::fs::copy(SENDMAIL, &plain_copy).unwrap();
    std::fs::set_permissions(&plain_copy, std::fs::Permissions::from_mode(0o755)).unwrap();

    // The setup step: service user, drop group, spool, maildrop/, the setgid bit.
    let _service = Account { user: service.clone(), groups: vec![service.clone(), group.clone()] };
    let init = || {
        let mut c = Command::new(queue_program());
        c.arg("-c").arg(&conf).args(["init", "--group", &group, "--sendmail"]).arg(&setgid_copy);
        c.output().unwrap()
    };
    let out = init();
    assert!(out.status.success(), "{}", text(&out));
    let again = init();
    assert!(again.status.success() && !text(&again).contains("created"), "idempotent: {}", text(&again));
    let spool = dir.path().join("spool");
    let maildrop = std::fs::metadata(spool.join("maildrop")).unwrap();
    let (service_uid, _) = ids(&service);
    let drop_gid = postern::sys::lookup_group(&group).unwrap().unwrap();
    assert_eq!((maildrop.mode() & 0o7777, maildrop.uid(), maildrop.gid()), (0o1730, service_uid, drop_gid));
    let secret = std::fs::metadata(spool.join("srs-secret")).unwrap();
    assert_eq!((secret.mode() & 0o7777, secret.uid(), secret.len()), (0o600, service_uid, 65), "the SRS secret");
    let program = std::fs::metadata(&setgid_copy).unwrap();
    assert_eq!((program.mode() & 0o7777, program.uid(), program.gid()), (0o2755, 0, drop_gid));
    let maildirs = dir.path().join("maildirs");
    std::fs::create_dir(&maildirs).unwrap();
    std::os::unix::fs::chown(&maildirs, Some(service_uid), None).unwrap();

    let _sender = add_user(&sender_name);
    let (uid, gid) = ids(&sender_name);
    let as_user = |program: &Path, args: &[&str], conf_env: &Path| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups"])
            .arg(program)
            .args(args)
            .env("POSTERN_CONF", conf_env);
        run(&mut c, b"Subject: from a user\n\nhello from a plain account\n")
    };
    let out = as_user(&setgid_copy, &["-v", "alice"], &conf);
    assert!(out.status.success(), "{}", text(&out));
    let id = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("queued as ").to_string();
    assert!(spool.join("maildrop").join(&id).exists(), "left in maildrop/ under {id}");
    // Without the setgid bit: refused, with the reason and the fix.
    let out = as_user(&plain_copy, &["alice"], &conf);
    assert_eq!(out.status.code(), Some(77), "{}", text(&out));
    assert!(text(&out).contains("setgid") && text(&out).contains("postern-queue init"), "{}", text(&out));
    // A configuration the caller wrote is not read by the setgid program.
    let own_conf = dir.path().join("mine.conf");
    std::fs::write(&own_conf, format!("spool = {}\n", dir.path().join("elsewhere").display())).unwrap();
    std::os::unix::fs::chown(&own_conf, Some(uid), None).unwrap();
    let out = as_user(&setgid_copy, &["alice"], &own_conf);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(!dir.path().join("elsewhere").exists());
    // The user cannot read what is waiting there.
    let peek = Command::new("setpriv")
        .args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups", "ls"])
        .arg(spool.join("maildrop"))
        .output()
        .unwrap();
    assert!(!peek.status.success(), "maildrop/ is not listable: {}", text(&peek));

    // mailq with no server running: it says where the listing comes from (sysexits 69).
    let out = as_user(&setgid_copy, &["-bp"], &conf);
    assert_eq!(out.status.code(), Some(69), "{}", text(&out));
    assert!(text(&out).contains("running postern-smtpd") && text(&out).contains("showq"), "{}", text(&out));

    // A `-bs` session killed right after its message is committed into maildrop/, before
    // the 250: the client heard nothing (it will send again), and the message is complete
    // there for the pickup, so it is delivered (at worst twice, never lost).
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups"])
        .arg(&setgid_copy)
        .arg("-bs")
        .env("POSTERN_CONF", &conf)
        .env("POSTERN_CRASH_AT", "after-drop-commit");
    let session =
        "HELO app\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: crash\r\n\r\nx\r\n.\r\n";
    let out = run(&mut c, session.as_bytes());
    assert!(!out.status.success() && !text(&out).contains("queued as"), "{}", text(&out));
    assert!(text(&out).contains("crash point after-drop-commit"), "{}", text(&out));
    let in_maildrop = || std::fs::read_dir(spool.join("maildrop")).unwrap().count();
    assert_eq!(in_maildrop(), 2, "the first message and the crashed session's");

    // The delivery run (as root, so as the service user) picks both up and delivers them.
    deliver(&conf, None, &[]);
    assert!(!spool.join("maildrop").join(&id).exists());
    assert_eq!(in_maildrop(), 0);
    let mut got = mailbox(dir.path(), "alice");
    assert_eq!(got.len(), 2);
    got.retain(|m| !m.contains("Subject: crash"));
    assert_eq!(got.len(), 1);
    assert!(
        got[0].contains(&format!("Received: by mail.example.test (postern, from userid {uid})\n\tid {id};")),
        "{}",
        got[0]
    );
    assert_eq!(field(&got[0], "From"), [format!("{sender_name}@example.test")]);
    assert!(got[0].starts_with(&format!("Return-Path: <{sender_name}@example.test>")), "{}", got[0]);

    // With postern-smtpd running (started as root, so as the service user), what the user
    // drops is picked up and delivered at once.
    let live_conf = dir.path().join("live.conf");
    std::fs::write(&live_conf, support::instant(&std::fs::read_to_string(&conf).unwrap())).unwrap();
    let daemon = Daemon::start(&live_conf);
    let started = std::time::Instant::now();
    let out = as_user(&setgid_copy, &["alice"], &live_conf);
    assert!(out.status.success(), "{}", text(&out));
    while mailbox(dir.path(), "alice").len() < 3 && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let took = started.elapsed();
    assert_eq!(mailbox(dir.path(), "alice").len(), 3, "{}", daemon.log());
    assert!(took < std::time::Duration::from_secs(1), "from sendmail to the maildir: {took:?}");

    // The user lists the queue (mail that waits for a remote server) as Postfix allows.
    let out = as_user(&setgid_copy, &["-v", "friend@remote.test"], &live_conf);
    assert!(out.status.success(), "{}", text(&out));
    let waiting = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("queued as ").to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut listed = String::new();
    while !listed.contains("friend@remote.test") && std::time::Instant::now() < deadline {
        let out = as_user(&setgid_copy, &["-bp"], &live_conf);
        assert!(out.status.success(), "{}", text(&out));
        listed = String::from_utf8_lossy(&out.stdout).to_string();
    }
    assert!(listed.contains(&waiting) && listed.contains(&format!("{sender_name}@example.test")), "{listed}");

    // `sendmail -bs` as the user (Symfony Mailer's default): an SMTP session whose message
    // goes through maildrop/ and lands at once.
    let session = "EHLO app.example.test\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n\
                   Subject: from php\r\n\r\nvia -bs\r\n.\r\nQUIT\r\n";
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--clear-groups"])
        .arg(&setgid_copy)
        .arg("-bs")
        .env("POSTERN_CONF", &live_conf);
    let out = run(&mut c, session.as_bytes());
    let replies = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && replies.contains("250 2.0.0 Ok: queued as"), "{}", text(&out));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while mailbox(dir.path(), "alice").len() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let got = mailbox(dir.path(), "alice");
    assert!(
        got.iter().any(|m| m.contains("via -bs") && m.contains(&format!("from userid {uid}"))),
        "{got:?}\n{}",
        daemon.log()
    );
    assert!(!list(&spool.join("maildrop")).iter().any(|p| p.to_string_lossy().ends_with(".part")));
}

/// postern-smtpd in the background, killed when dropped; what it logged.
struct Daemon(std::process::Child, std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Daemon {
    fn start(conf: &Path) -> Daemon {
        use std::io::BufRead;
        let mut child = Command::new(support::smtpd_binary())
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for line in lines.by_ref() {
            let ready = line.contains("listening on");
            log.lock().unwrap().push(line);
            if ready {
                break;
            }
        }
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || lines.for_each(|l| sink.lock().unwrap().push(l)));
        Daemon(child, log)
    }

    fn log(&self) -> String {
        self.1.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_bad_alias_line_costs_that_alias_alone() {
    let (dir, conf) = setup("bad-alias", "");
    let aliases = "root: alice\nbot: some/relative/file\nthis line has no colon\npostmaster: alice\n";
    std::fs::write(dir.path().join("aliases"), aliases).unwrap();
    assert!(sendmail(&conf, &["root", "bot"], b"Subject: both\n\nhi\n").status.success());
    let log = deliver(&conf, None, &[]);
    assert_eq!(mailbox(dir.path(), "alice").len(), 1, "root's alias still works: {log}");
    assert!(log.contains("to=<bot@example.test>") && log.contains("dsn=4.3.5, status=deferred"), "{log}");
    assert!(log.contains("aliases:2: `some/relative/file`"), "the reason names the line: {log}");
    let check = Command::new(support::program("postern-deliver")).arg("-c").arg(&conf).arg("--check").output().unwrap();
    assert!(!check.status.success());
    assert!(
        text(&check).contains("aliases:2:") && text(&check).contains("aliases:3: expected `name: value`"),
        "{}",
        text(&check)
    );
    let out = sendmail(&conf, &["-bi"], b"");
    assert_eq!(out.status.code(), Some(65), "{}", text(&out));
    assert!(text(&out).contains("2 lines not used"), "{}", text(&out));
}

/// A spool and configuration for the system's own users: `extra` added, no mailboxes file,
/// `aliases` as given, and the accounts `names` with homes under DIR/home. The accounts, the
/// service user and its groups (which `postern-queue init` makes) go when the returned
/// accounts are dropped.
fn system_setup(
    tag: &str,
    extra: &str,
    aliases: &str,
    names: &[&String],
    service: &str,
    group: &str,
) -> (TempDir, PathBuf, PathBuf, Vec<Account>) {
    let (dir, conf) = setup(tag, extra);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, support::without_mailboxes(&config, dir.path())).unwrap();
    std::fs::write(dir.path().join("aliases"), aliases).unwrap();
    let homes = dir.path().join("home");
    std::fs::create_dir(&homes).unwrap();
    let mut accounts =
        vec![Account { user: service.to_string(), groups: vec![service.to_string(), group.to_string()] }];
    for name in names {
        let mut useradd = Command::new("useradd");
        useradd.args(["--create-home", "--shell", "/bin/sh", "--home-dir"]).arg(homes.join(name)).arg(name);
        let out = useradd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        accounts.push(Account { user: name.to_string(), groups: Vec::new() });
    }
    (dir, conf, homes, accounts)
}

/// `forward_files = on`: a system user's `~/.forward` is followed as an alias of that user's
/// would be: a copy kept (`\\alice`), a command run and a file written as the user, an address
/// elsewhere sent on. The homes are 0700, so only the helper that kept root reads them. A
/// `.forward` others may write is not followed: the mail goes to the mailbox, and the log says
/// why.
#[test]
fn a_system_users_forward_file_is_followed_as_that_user() {
    if skip_unless_root("create users and write as them") {
        return;
    }
    let sink = support::FakeMx::start("127.0.0.1:0", |_| None);
    let tag = std::process::id() % 100_000;
    let (alice, bob) = (format!("pstn-fa{tag}"), format!("pstn-fb{tag}"));
    let (service, group) = (format!("pstn-fv{tag}"), format!("pstn-fg{tag}"));
    let extra = format!(
        "local_users = system\nforward_files = on\nuser = {service}\nrelayhost = [127.0.0.1]:{}\n",
        sink.addr.port()
    );
    let aliases = format!("root: {alice}\npostmaster: root\n");
    let (dir, conf, homes, accounts) = system_setup("forward", &extra, &aliases, &[&alice, &bob], &service, &group);
    for name in [&alice, &bob] {
        std::fs::set_permissions(homes.join(name), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let out = Command::new(queue_program()).arg("-c").arg(&conf).args(["init", "--group", &group]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let home = |name: &str| homes.join(name);
    let archive = home(&alice).join("archive.mbox");
    let forward = |name: &str, text: String, mode: u32| {
        let path = home(name).join(".forward");
        std::fs::write(&path, text).unwrap();
        let (uid, gid) = ids(name);
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    forward(
        &alice,
        format!(
            "# mine, kept and copied\n\\{alice}, \"|cat >> piped.txt\"\n{}\nalice-away@remote.test\n",
            archive.display()
        ),
        0o644,
    );
    forward(&bob, "bob-away@remote.test\n".into(), 0o666);

    // Where it would go, said before anything is sent.
    let out = sendmail(&conf, &["-bv", &alice], b"");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    for line in [
        format!("{alice}: deliverable: maildir {}/Maildir/ (written as {alice})", home(&alice).display()),
        format!("{alice}: deliverable: command |cat >> piped.txt (run as {alice})"),
        format!("{alice}: deliverable: file {} (as {alice})", archive.display()),
    ] {
        assert!(said.lines().any(|l| l == line), "{line}\n{said}");
    }
    assert!(said.contains(&format!("{alice}: deliverable: alice-away@remote.test by 127.0.0.1")), "{said}");

    assert!(sendmail(&conf, &[&alice], b"Subject: followed\n\nto alice\n").status.success());
    assert!(sendmail(&conf, &[&bob], b"Subject: not followed\n\nto bob\n").status.success());
    let log = deliver(&conf, None, &[]);
    assert!(support::waiting(&dir.path().join("spool")).is_empty(), "{log}");
    let (uid, _) = ids(&alice);
    let kept = list(&home(&alice).join("Maildir/new"));
    assert_eq!(kept.len(), 1, "{log}");
    let piped = home(&alice).join("piped.txt");
    for path in [&kept[0], &piped, &archive] {
        let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}\n{log}", path.display()));
        assert_eq!(meta.uid(), uid, "{} is written as alice", path.display());
        assert!(std::fs::read_to_string(path).unwrap().contains("to alice"), "{}", path.display());
    }
    assert!(std::fs::read_to_string(&archive).unwrap().starts_with("From "), "an mbox copy");
    let sent: Vec<String> = sink.messages().iter().map(|m| String::from_utf8_lossy(m).into_owned()).collect();
    assert_eq!(sent.len(), 1, "{log}");
    assert!(sent[0].contains("to alice"), "{}", sent[0]);
    assert!(sink.commands().iter().any(|c| c == "RCPT TO:<alice-away@remote.test>"), "{:?}", sink.commands());
    // bob's file may be written by anyone: his mail stays his, and the log says why.
    let bobs = list(&home(&bob).join("Maildir/new"));
    assert_eq!(bobs.len(), 1, "{log}");
    assert!(log.contains(&format!("~{bob}/.forward is not {bob}'s own, or others may write it")), "{log}");
    drop(accounts);
}

#[test]
fn system_users_get_their_mail_in_their_own_home_written_as_themselves() {
    if skip_unless_root("create users and write as them") || skip_unless(have("setpriv"), "setpriv is missing") {
        return;
    }
    let tag = std::process::id() % 100_000;
    let (alice, bob) = (format!("pstn-a{tag}"), format!("pstn-b{tag}"));
    let (service, group) = (format!("pstn-v{tag}"), format!("pstn-g{tag}"));
    let extra = format!("local_users = system\nuser = {service}\n");
    let aliases = format!("root: {alice}\npostmaster: root\nteam: {alice}, {bob}\n");
    let (dir, conf, homes, mut accounts) =
        system_setup("system-users", &extra, &aliases, &[&alice, &bob], &service, &group);
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let setgid_copy = bin.join("postern-sendmail");
    std::fs::copy(SENDMAIL, &setgid_copy).unwrap();
    // Installed beside it, as `make install` does: sendmail starts deliveries with it.
    std::fs::copy(support::program("postern-deliver"), bin.join("postern-deliver")).unwrap();
    let mut init = Command::new(queue_program());
    init.arg("-c").arg(&conf).args(["init", "--group", &group, "--sendmail"]).arg(&setgid_copy);
    let out = init.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // cron's mail to root, through root's alias, and mail to an alias of both, delivered by
    // a run started as root (the timer's).
    assert!(
        sendmail(&conf, &["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"], b"Subject: cron\n\nout\n")
            .status
            .success()
    );
    assert!(sendmail(&conf, &["team"], b"Subject: team\n\nhello both\n").status.success());
    let log = deliver(&conf, None, &[]);
    let home_maildir = |name: &str| homes.join(name).join("Maildir");
    let owned_by = |name: &str, copies: usize| {
        let maildir = home_maildir(name);
        let files = list(&maildir.join("new"));
        assert_eq!(files.len(), copies, "{name}");
        let (uid, gid) = ids(name);
        for path in files.iter().chain([&maildir, &maildir.join("new")]) {
            let meta = std::fs::metadata(path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{} is the user's own", path.display());
        }
        assert_eq!(std::fs::metadata(&files[0]).unwrap().mode() & 0o777, 0o600, "readable by its user alone");
    };
    owned_by(&alice, 2);
    owned_by(&bob, 1);
    assert!(support::waiting(&dir.path().join("spool")).is_empty(), "{log}");

    // A message the server quarantined goes into bob's Junk folder, made by bob's writer.
    let spool = dir.path().join("spool");
    let quarantined = postern::spool::Envelope {
        arrived: support::now(),
        client: Some("192.0.2.1".parse().unwrap()),
        helo: Some("mx.remote.test".into()),
        protocol: "ESMTP".into(),
        body: postern::smtp::command::BodyType::SevenBit,
        smtputf8: false,
        auth: None,
        submitted: false,
        quarantine: true,
        from: postern::smtp::address::ReversePath::parse(b"phish@remote.test").unwrap(),
        rcpts: vec![postern::smtp::address::ForwardPath::parse(format!("{bob}@example.test").as_bytes()).unwrap()],
        size: 0,
        check: None,
    };
    let id = postern::spool::Spool::open(&spool).unwrap().inject(&quarantined, b"X-Spam: Yes\r\n\r\nx\r\n").unwrap();
    let (service_uid, service_gid) = ids(&service);
    std::os::unix::fs::chown(spool.join("new").join(id.as_str()), Some(service_uid), Some(service_gid)).unwrap();
    let log = deliver(&conf, None, &[]);
    let junk = home_maildir(&bob).join(".Junk");
    let files = list(&junk.join("new"));
    assert_eq!(files.len(), 1, "{log}");
    let (uid, gid) = ids(&bob);
    for path in [&files[0], &junk, &junk.join("maildirfolder")] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{} is bob's own", path.display());
    }
    owned_by(&bob, 1);

    // With postern-smtpd running (started as root): `mail -s` by alice herself lands in her
    // own maildir at once, written as her.
    let live_conf = dir.path().join("live.conf");
    std::fs::write(&live_conf, support::instant(&std::fs::read_to_string(&conf).unwrap())).unwrap();
    let daemon = Daemon::start(&live_conf);
    let (uid, gid) = ids(&alice);
    let started = std::time::Instant::now();
    let mut c = Command::new("setpriv");
    c.args(["--reuid", &uid.to_string(), "--regid", &gid.to_string(), "--init-groups"])
        .arg(&setgid_copy)
        .arg(&bob)
        .env("POSTERN_CONF", &live_conf);
    let out = run(&mut c, b"Subject: at once\n\nfrom alice\n");
    assert!(out.status.success(), "{}", text(&out));
    while list(&home_maildir(&bob).join("new")).len() < 2 && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let took = started.elapsed();
    owned_by(&bob, 2);
    assert!(took < std::time::Duration::from_secs(1), "from sendmail to bob's maildir: {took:?}\n{}", daemon.log());
    drop(daemon);

    // Root through the setgid copy, as root's cron and `mail -s` run it, with no daemon: the
    // queue file is the service user's, and the copy lands in bob's maildir at once, as bob.
    let queue_owners = || {
        let files: Vec<PathBuf> = ["new", "cur"].iter().flat_map(|d| list(&spool.join(d))).collect();
        files.iter().map(|f| std::fs::metadata(f).unwrap().uid()).collect::<Vec<u32>>()
    };
    let started = std::time::Instant::now();
    let out = run(Command::new(&setgid_copy).arg(&bob).env("POSTERN_CONF", &live_conf), b"Subject: root\n\ncron\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(queue_owners().iter().all(|&uid| uid == service_uid), "queued as the service user");
    while list(&home_maildir(&bob).join("new")).len() < 3 && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    owned_by(&bob, 3);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "root's mail waited for a run");
    // What follows is queued with instant delivery off, and must stay queued.
    support::instant_delivery_ended(&spool);

    // A queue file an older sendmail left as root is given back to the service user by init.
    let out = run(Command::new(&setgid_copy).arg(&bob).env("POSTERN_CONF", &conf), b"Subject: old\n\nroot's\n");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(queue_owners(), [service_uid]);
    let queued = list(&spool.join("new")).remove(0);
    let drop_gid = postern::sys::lookup_group(&group).unwrap().unwrap();
    std::os::unix::fs::chown(&queued, Some(0), Some(drop_gid)).unwrap();
    let out = init.output().unwrap();
    assert!(out.status.success() && text(&out).contains("gave 1 queue file"), "{}", text(&out));
    assert_eq!(queue_owners(), [service_uid]);
    deliver(&conf, None, &[]);
    owned_by(&bob, 4);

    // A run killed between bob's copy and its record: the next run asks the helper, which
    // looks as root under the name the run noted, finds the copy and makes no second one.
    assert!(sendmail(&conf, &[bob.as_str()], b"Subject: killed\n\nonce\n").status.success());
    let (status, log) = support::deliver_with(&conf, &[("POSTERN_CRASH_AT", "after-local-copy")], &[]);
    assert!(!status.success() && log.contains("crash point after-local-copy"), "{log}");
    owned_by(&bob, 5);
    let log = deliver(&conf, None, &[]);
    assert!(log.contains("the copy a killed run made is there"), "{log}");
    owned_by(&bob, 5);
    assert!(support::waiting(&spool).is_empty(), "{log}");

    // Accounts that are no person's (no login shell, no home of their own) are no recipients:
    // refused at RCPT, and bounced at once when mail for them is queued locally.
    let session = b"HELO localhost\r\nMAIL FROM:<>\r\nRCPT TO:<daemon@example.test>\r\n\
                    RCPT TO:<nobody@example.test>\r\nRCPT TO:<{service}@example.test>\r\nRCPT TO:<{alice}@example.test>\r\nQUIT\r\n";
    let session = String::from_utf8_lossy(session).replace("{service}", &service).replace("{alice}", &alice);
    let out = sendmail(&conf, &["-bs"], session.as_bytes());
    let replies: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" 5.1.1") || l.contains(" 2.1.5"))
        .collect();
    assert!(replies.len() == 4 && replies[..3].iter().all(|r| r.starts_with("550 5.1.1")), "{}", text(&out));
    assert!(replies[3].starts_with("250 2.1.5"), "{}", text(&out));
    assert!(sendmail(&conf, &["daemon"], b"Subject: to daemon\n\nx\n").status.success());
    deliver(&conf, None, &[]);
    assert!(support::waiting(&spool).is_empty(), "bounced at once, not deferred");
    let reports = list(&home_maildir(&alice).join("new"));
    let report = std::fs::read_to_string(
        reports.iter().max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap()).unwrap(),
    )
    .unwrap();
    assert!(report.contains("Status: 5.1.1") && report.contains("daemon@example.test"), "{report}");

    // A person whose ~/Maildir is not theirs (root made it): the copy cannot be written as
    // them, now or in five days, so it is bounced at once.
    let carol = format!("pstn-c{tag}");
    let mut useradd = Command::new("useradd");
    useradd.args(["--create-home", "--shell", "/bin/sh", "--home-dir"]).arg(homes.join(&carol)).arg(&carol);
    assert!(useradd.output().unwrap().status.success());
    accounts.push(Account { user: carol.clone(), groups: Vec::new() });
    std::fs::create_dir(homes.join(&carol).join("Maildir")).unwrap();
    assert!(sendmail(&conf, &[&carol], b"Subject: to carol\n\nx\n").status.success());
    let log = deliver(&conf, None, &[]);
    assert!(support::waiting(&spool).is_empty(), "bounced at once, not deferred: {log}");
    assert!(log.contains("dsn=5.2.1") && log.contains("status=bounced"), "{log}");
    drop(accounts);
}

fn list(dir: &Path) -> Vec<PathBuf> {
    support::list(dir)
}

#[test]
fn aliases_to_commands_files_and_include_lists() {
    if skip_unless_root("run alias commands as another user") {
        return;
    }
    let (dir, conf) = setup("alias-kinds", "alias_user = nobody\nalias_timeout = 1s\n");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (nobody, _) = ids("nobody");
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    std::os::unix::fs::chown(&out_dir, Some(nobody), None).unwrap();
    let o = out_dir.display();
    let list = dir.path().join("team.list");
    std::fs::write(&list, format!("# the team\nalice\n|cat > {o}/from-list\n")).unwrap();
    let aliases = format!(
        "root: alice\npostmaster: alice\nbot: |env > {o}/env; cat > {o}/piped\narchive: {o}/archive.mbox\n\
         team: :include:{}\nrefuses: |exit 67\nlater: |exit 75\nslow: |sleep 30\n",
        list.display()
    );
    std::fs::write(dir.path().join("aliases"), aliases).unwrap();
    let body = b"Subject: kinds\n\nFrom the start of a line\nbody\n";
    let out =
        sendmail(&conf, &["-f", "alice@example.test", "bot", "archive", "team", "refuses", "later", "slow"], body);
    assert!(out.status.success(), "{}", text(&out));
    let log = deliver(&conf, None, &[]);

    let piped = std::fs::read_to_string(out_dir.join("piped")).unwrap_or_default();
    assert!(piped.starts_with("Return-Path: <alice@example.test>\nDelivered-To: bot@example.test\n"), "{piped}\n{log}");
    assert!(piped.contains("\nFrom the start of a line\n"), "{piped}");
    assert_eq!(std::fs::metadata(out_dir.join("piped")).unwrap().uid(), nobody, "run as alias_user");
    let env = std::fs::read_to_string(out_dir.join("env")).unwrap();
    for line in ["SENDER=alice@example.test", "RECIPIENT=bot@example.test", "USER=nobody", "HOME=/"] {
        assert!(env.lines().any(|l| l == line), "{line} in\n{env}");
    }
    assert!(!env.contains("POSTERN"), "a clean environment:\n{env}");

    let mbox = std::fs::read_to_string(out_dir.join("archive.mbox")).unwrap();
    assert!(mbox.starts_with("From alice@example.test "), "{mbox}");
    assert!(mbox.contains("\n>From the start of a line\n") && mbox.ends_with("body\n\n"), "{mbox}");
    let meta = std::fs::metadata(out_dir.join("archive.mbox")).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (nobody, 0o600));

    assert_eq!(mailbox(dir.path(), "alice").len(), 2, "team's copy, and the report for `refuses`: {log}");
    assert!(std::fs::read_to_string(out_dir.join("from-list")).unwrap().contains("Subject: kinds"));
    let says = |to: &str, rest: &str| {
        log.lines().any(|l| l.contains(&format!("to=<{to}>, relay=local,")) && l.ends_with(rest))
    };
    assert!(says("refuses@example.test", "dsn=5.3.0, status=bounced (|exit 67: exit 67)"), "{log}");
    assert!(says("later@example.test", "dsn=4.3.0, status=deferred (|exit 75: exit 75)"), "{log}");
    assert!(says("slow@example.test", "dsn=4.3.0, status=deferred (|sleep 30: killed after 1s)"), "{log}");
    assert!(
        says("bot@example.test", &format!("status=sent (delivered to command: env > {o}/env; cat > {o}/piped)")),
        "{log}"
    );
    let report = mailbox(dir.path(), "alice").into_iter().find(|m| m.contains("multipart/report")).unwrap_or_default();
    assert!(report.contains("Final-Recipient: rfc822; refuses@example.test"), "{report}");

    // A command that leaves a process behind holding its pipes holds the delivery no longer
    // than alias_timeout: what it left is killed, and the copy counts as delivered.
    std::fs::write(
        dir.path().join("aliases"),
        "root: alice
postmaster: alice
bg: \"|sleep 20 &\"\n",
    )
    .unwrap();
    assert!(sendmail(&conf, &["bg"], b"Subject: bg\n\nx\n").status.success());
    let started = std::time::Instant::now();
    let log = deliver(&conf, None, &[]);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "held {:?}: {log}", started.elapsed());
    assert!(log.contains("to=<bg@example.test>, relay=local,") && log.contains("status=sent"), "{log}");
    let left = Command::new("pgrep").args(["-u", "nobody", "-f", "sleep 20"]).output().unwrap();
    assert!(left.stdout.is_empty(), "nothing it left behind lives on");
}

/// The launcher a daemon started as root keeps for instant delivery: stopped, it holds no
/// session's 250 (the messages wait for a run); killed, it is reaped, said in the log, and
/// instant delivery goes on without it.
#[test]
fn a_stopped_or_killed_root_launcher_holds_no_reply() {
    if skip_unless_root("start the server as root with a service user") {
        return;
    }
    let service = format!("pstn-l{}", std::process::id() % 100_000);
    let _account = Account { user: service.clone(), groups: vec![service.clone()] };
    let out = Command::new("useradd").args(["--system", "--user-group", "--no-create-home", &service]).output();
    assert!(out.unwrap().status.success());
    let (uid, gid) = ids(&service);
    let dir = TempDir::new("root-launcher");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["spool", "maildirs"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::os::unix::fs::chown(dir.path().join(sub), Some(uid), Some(gid)).unwrap();
    }
    // An alias command makes the daemon keep a launcher as root (they run as alias_user).
    let config = support::instant(&support::config_with(dir.path(), &format!("user = {service}\n")));
    std::fs::write(dir.path().join("aliases"), "postmaster: alice\nbot: |cat > /dev/null\n").unwrap();
    let server = support::Server::start_in(dir, &config);
    let launcher = || {
        support::children(server.pid()).into_iter().find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("--launcher"))
        })
    };
    // It starts just after the listeners are bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while launcher().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = launcher().unwrap_or_else(|| panic!("a launcher kept as root: {}", server.log()));
    let signal = |name: &str, pid: u32| {
        Command::new("kill").args([name, &pid.to_string()]).status().unwrap();
    };

    // Stopped: more messages than its input pipe holds IDs, each answered at once.
    signal("-STOP", pid);
    const MESSAGES: usize = 3000;
    let addr = server.addr;
    let senders: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = support::Client::greeted(addr);
                c.cmd("EHLO client.test");
                (0..MESSAGES / 4)
                    .map(|i| {
                        c.open_data("someone@remote.test", &["alice@example.test"]);
                        c.mail_text(format!("Subject: {t}.{i}\r\n\r\nx\r\n").as_bytes())
                    })
                    .filter(|r| !r.starts_with("250 "))
                    .count()
            })
        })
        .collect();
    let refused: usize = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(refused, 0, "{}", server.log());
    let log = server.log_with("the delivery launcher is not reading");
    assert!(log.contains("the delivery launcher is not reading"), "{log}");
    signal("-CONT", pid);

    // Killed: reaped, said, and the next message is delivered by the daemon's own child.
    signal("-KILL", pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !server.log().contains("launcher kept as root ended") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(server.log().contains("launcher kept as root ended"), "{}", server.log());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "reaped, not a zombie");
    let mut c = support::Client::greeted(addr);
    c.cmd("EHLO client.test");
    c.open_data("someone@remote.test", &["alice@example.test"]);
    assert!(c.mail_text(b"Subject: after\r\n\r\nx\r\n").starts_with("250 "));
    let alice = server.dir.path().join("maildirs/alice");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !support::maildir(&alice).iter().any(|m| m.contains("Subject: after")) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(support::maildir(&alice).iter().any(|m| m.contains("Subject: after")), "{}", server.log());
}
