//! The SMTP server over real sockets: golden dialogues, then behaviour a transcript cannot show.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Client, Server, code};

/// Turns `\r`, `\n`, `\t`, `\\` and `\xNN` into bytes.
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            match bytes[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = text.get(i + 2..i + 4).ok_or("\\x wants two hex digits")?;
                    out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad escape \\x{hex}"))?);
                    i += 2;
                }
                other => return Err(format!("unknown escape \\{}", other as char)),
            }
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// One step of a transcript.
#[derive(Debug)]
enum Step {
    /// `C: text`: send the line, CRLF added.
    Line(String),
    /// `R: bytes`: send raw bytes, written with `\r`, `\n`, `\t`, `\\`, `\xNN`.
    Raw(Vec<u8>),
    /// `S: text` lines: the next reply, every line of it, compared whole; `ddd-` lines
    /// continue it. `{id}` stands for a queue ID.
    Reply(Vec<String>),
    /// `X:`: the server closes the connection.
    Closed,
    /// `Q: n`: n messages in spool/new.
    Queued(usize),
}

/// Reads a transcript; any line that is not a step, a `#` comment or blank is an error, so
/// a typo cannot turn into a step that silently checks nothing.
fn parse_transcript(script: &str) -> Result<(String, Vec<(usize, Step)>), String> {
    let mut extra = String::from("error_sleep_time = 0s\n");
    let mut steps: Vec<(usize, Step)> = Vec::new();
    for (n, line) in script.lines().enumerate().map(|(n, l)| (n + 1, l)) {
        if let Some(text) = line.strip_prefix("S: ") {
            // A reply goes on after a `ddd-` line (§4.2.1); after a `ddd ` line the next one starts.
            match steps.last_mut() {
                Some((_, Step::Reply(lines))) if lines.last().is_some_and(|l| l.as_bytes().get(3) == Some(&b'-')) => {
                    lines.push(text.to_string())
                }
                _ => steps.push((n, Step::Reply(vec![text.to_string()]))),
            }
            continue;
        }
        let step = if let Some(setting) = line.strip_prefix("# config: ") {
            extra += setting;
            extra.push('\n');
            continue;
        } else if line.is_empty() || line.starts_with("# ") || line == "#" {
            continue;
        } else if let Some(text) = line.strip_prefix("C: ") {
            Step::Line(text.to_string())
        } else if let Some(raw) = line.strip_prefix("R: ") {
            Step::Raw(unescape(raw).map_err(|e| format!("line {n}: {e}"))?)
        } else if line == "X:" {
            Step::Closed
        } else if let Some(count) = line.strip_prefix("Q: ") {
            Step::Queued(count.parse().map_err(|_| format!("line {n}: `Q:` wants a number"))?)
        } else {
            return Err(format!("line {n}: not a transcript line: {line:?}"));
        };
        steps.push((n, step));
    }
    if !matches!(steps.first(), Some((_, Step::Reply(_)))) {
        return Err("a transcript starts with the greeting (`S:`)".into());
    }
    Ok((extra, steps))
}

/// Whether a received reply line is the expected one, `{id}` matching one queue ID.
fn line_matches(want: &str, got: &str) -> bool {
    match want.split_once("{id}") {
        None => want == got,
        Some((before, after)) => got
            .strip_prefix(before)
            .and_then(|rest| rest.strip_suffix(after))
            .is_some_and(|id| id.len() == 23 && id.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))),
    }
}

/// Replays one transcript in `tests/transcripts/` against a fresh server.
fn replay(name: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts").join(format!("{name}.txt"));
    let script = std::fs::read_to_string(&path).unwrap();
    let (extra, steps) = parse_transcript(&script).unwrap_or_else(|e| panic!("{name}.txt: {e}"));
    let server = Server::start(&extra);
    let mut client = Client::connect(server.addr);
    for (n, step) in steps {
        let at = format!("{name}.txt:{n}");
        match step {
            Step::Line(text) => client.send(format!("{text}\r\n").as_bytes()),
            Step::Raw(bytes) => client.send(&bytes),
            Step::Reply(want) => {
                let reply = client.reply();
                let got: Vec<&str> = reply.lines().collect();
                let same = got.len() == want.len() && want.iter().zip(&got).all(|(w, g)| line_matches(w, g));
                assert!(same, "{at}: expected\n{}\ngot\n{reply}\nlog:\n{}", want.join("\n"), server.log());
            }
            Step::Closed => assert!(client.is_closed(Duration::from_secs(5)), "{at}: connection still open"),
            Step::Queued(want) => assert_eq!(server.queued().len(), want, "{at}: messages in spool/new"),
        }
    }
}

/// One test per transcript; `every_transcript_has_its_test` keeps the list whole.
macro_rules! transcripts {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { replay(stringify!($name)); })*
        pub const TRANSCRIPTS: &[&str] = &[$(stringify!($name)),*];
    };
}

mod transcript {
    use super::replay;
    transcripts!(basic, params, relay_denied, relay_denied_2, relay_trusted, sequence, smuggling, syntax, vrfy_on);
}

#[test]
fn every_transcript_has_its_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut found: Vec<String> = support::list(&dir)
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "txt"))
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, transcript::TRANSCRIPTS, "a transcript without its test (or a test without its file)");
}

#[test]
fn the_transcript_reader_refuses_what_it_does_not_know() {
    let ok = "S: 220 x\nC: NOOP\nS: 250-a\nS: 250 b\nS: 221 bye\n# comment\n\nX:\nQ: 0\n";
    let (_, steps) = parse_transcript(ok).unwrap();
    assert_eq!(steps.len(), 6, "{steps:?}");
    assert!(matches!(&steps[2].1, Step::Reply(lines) if lines.len() == 2), "S: lines make one reply");
    for bad in ["S: 220 x\nS 250 ok\n", "S: 220 x\nC:NOOP\n", "S: 220 x\nQ: two\n", "C: NOOP\n", "S: 220 x\nR: \\q\n"] {
        assert!(parse_transcript(bad).is_err(), "{bad:?}");
    }
    assert!(line_matches("250 2.0.0 Ok: queued as {id}", "250 2.0.0 Ok: queued as 0001234567890ABCDEF0123"));
    assert!(!line_matches("250 2.0.0 Ok: queued as {id}", "250 2.0.0 Ok: queued as nothing"));
    assert!(!line_matches("250 2.1.0 Ok", "250 2.1.0 Ok and more"));
}

#[test]
fn spool_holds_exactly_what_was_sent() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    // Dot-stuffed lines, an empty line, a 5000-octet line, 8-bit bytes.
    let long = "x".repeat(5000);
    let sent = format!("Subject: exact\r\n\r\n..leading dot\r\n\r\n{long}\r\n\u{e9}t\u{e9}\r\n...\r\nend");
    let reply = c.mail("sender@remote.test", &["alice@example.test"], sent.as_bytes());
    assert_eq!(code(&reply), "250 2.0.0");
    let files = server.queued();
    assert_eq!(files.len(), 1);
    let want = format!("Subject: exact\r\n\r\n.leading dot\r\n\r\n{long}\r\n\u{e9}t\u{e9}\r\n..\r\nend\r\n");
    assert_eq!(String::from_utf8(support::body_of(&files[0])).unwrap(), want);
    let id = reply.rsplit(' ').next().unwrap();
    assert_eq!(files[0].file_name().unwrap().to_str().unwrap(), id, "the 250 names the queue file");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("\nfrom: <sender@remote.test>\nrcpt: <alice@example.test>\n"), "{text}");
    let received = String::from_utf8(support::message_of(&files[0])).unwrap();
    assert!(received.starts_with(
        "Authentication-Results: mail.example.test (loopback client, not checked); none\r\n\
         Received: from client.test (unknown [127.0.0.1])\r\n\tby mail.example.test (postern) with ESMTP id "
    ));
    assert!(received.contains(&format!("id {id}\r\n\tfor <alice@example.test>;\r\n\t")));
}

#[test]
fn pipelined_commands_get_every_reply_without_waiting_for_data() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    // MAIL, RCPT, RCPT in one write; all three replies must come without DATA.
    c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<postmaster@example.test>\r\n");
    for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5"] {
        assert_eq!(code(&c.reply()), want);
    }
    c.send(b"DATA\r\n");
    assert_eq!(code(&c.reply()), "354");
    c.send(b"Subject: p\r\n\r\nx\r\n.\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n");
    for want in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354"] {
        assert_eq!(code(&c.reply()), want);
    }
    c.send(b"y\r\n.\r\nQUIT\r\n");
    assert_eq!(code(&c.reply()), "250 2.0.0");
    assert_eq!(code(&c.reply()), "221 2.0.0");
    assert_eq!(server.queued().len(), 2);
}

/// Sends each write in turn (a short pause between, so each arrives as its own read), then
/// reads every reply until the server closes.
fn replies_until_closed(writes: &[&[u8]]) -> (Vec<String>, usize) {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    for w in writes {
        c.send(w);
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut replies = Vec::new();
    loop {
        let reply = c.reply();
        if reply.is_empty() {
            break;
        }
        replies.push(reply);
        assert!(replies.len() < 10, "{replies:?}");
    }
    (replies, server.queued().len())
}

#[test]
fn a_bare_lf_ends_the_session_and_nothing_after_it_runs() {
    let refused = "500 5.5.2 Error: bare <LF> received; lines end with <CR><LF>";
    let mail: &[u8] = b"MAIL FROM:<a@remote.test>\r\n";
    for (writes, before) in [
        (vec![&b"NOOP\nNOOP\r\n"[..]], vec![]),
        (vec![&b"NOOP\n"[..], &b"NOOP\r\n"[..]], vec![]),
        (vec![&b"NOOP"[..], &b"\nNOOP\r\n"[..]], vec![]),
        (vec![&b"MAIL FROM:<a@remote.test>\nRCPT TO:<alice@example.test>\r\nDATA\r\n"[..]], vec![]),
        (vec![mail, &b"RCPT TO:<alice@example.test>\nDATA\r\nx\r\n.\r\n"[..]], vec!["250 2.1.0 Ok"]),
        (vec![&b"RSET\r\nNOOP\nQUIT\r\n"[..]], vec!["250 2.0.0 Ok"]),
    ] {
        let (replies, queued) = replies_until_closed(&writes);
        let mut want: Vec<String> = before.iter().map(|s| s.to_string()).collect();
        want.push(refused.to_string());
        assert_eq!(replies, want, "{writes:?}");
        assert_eq!(queued, 0);
    }
}

#[test]
fn the_end_of_data_survives_slow_byte_by_byte_arrival() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.open_data("a@remote.test", &["alice@example.test"]);
    c.send(b"Subject: s6\r\n\r\nbody");
    for b in b"\r\n.\r\n" {
        c.send(&[*b]);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(code(&c.reply()), "250 2.0.0");
}

#[test]
fn long_command_lines_are_refused_once_and_the_session_survives() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    // A 512-octet NOOP line is fine.
    let noop = format!("NOOP {}", "a".repeat(505));
    assert_eq!(noop.len() + 2, 512);
    assert_eq!(code(&c.cmd(&noop)), "250 2.0.0");
    // 3000 X then QUIT on the same line: exactly one 500, no 221.
    let mut line = vec![b'X'; 3000];
    line.extend_from_slice(b"QUIT\r\nNOOP\r\n");
    c.send(&line);
    assert_eq!(code(&c.reply()), "500 5.5.2");
    assert_eq!(code(&c.reply()), "250 2.0.0");
    // EHLO with 10 KB.
    assert_eq!(code(&c.cmd(&format!("EHLO {}", "a".repeat(10_000)))), "500 5.5.2");
    assert_eq!(code(&c.cmd("EHLO ok")), "250");
}

#[test]
fn an_endless_command_line_keeps_memory_flat() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    let before = server.rss_kib();
    let chunk = vec![b'M'; 1 << 20];
    for _ in 0..64 {
        c.send(&chunk); // 64 MiB instead of 5 GiB: no LF, ever
    }
    c.send(b"\r\nNOOP\r\n");
    assert_eq!(code(&c.reply()), "500 5.5.2");
    assert_eq!(code(&c.reply()), "250 2.0.0");
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn a_message_over_the_limit_is_read_to_the_end_and_refused() {
    let server = Server::start("message_size_limit = 100k\n");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let body = vec![b'z'; 300 * 1024];
    let reply = c.mail("a@remote.test", &["alice@example.test"], &body);
    assert_eq!(code(&reply), "552 5.3.4");
    assert!(server.queued().is_empty());
    assert!(support::list(&server.spool().join("tmp")).is_empty(), "tmp/ cleaned");
    // The next transaction works normally.
    let reply = c.mail("a@remote.test", &["alice@example.test"], b"small");
    assert_eq!(code(&reply), "250 2.0.0");
}

#[test]
fn fifty_megabytes_stream_through_with_flat_memory() {
    let server = Server::start("message_size_limit = 60M\n");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let baseline = server.rss_kib();
    let line = format!("{}\r\n", "0123456789".repeat(100));
    let mut body = Vec::with_capacity(50 << 20);
    while body.len() < 50 << 20 {
        body.extend_from_slice(line.as_bytes());
    }
    let reply = c.mail("a@remote.test", &["alice@example.test"], &body);
    assert_eq!(code(&reply), "250 2.0.0");
    let grown = server.peak_rss_kib().saturating_sub(baseline);
    assert!(grown < 16 * 1024, "peak RSS grew {grown} KiB for a 50 MB message");
    let files = server.queued();
    let stored = support::body_of(&files[0]);
    assert_eq!(stored.len(), body.len() + 2);
    assert!(stored.starts_with(&body[..1000]) && stored.ends_with(b"89\r\n\r\n"));
}

#[test]
fn hop_count_of_one_hundred_is_a_loop() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let headers = |n: usize| "Received: from a by b; Thu, 1 Jan 1970 00:00:00 +0000\r\n".repeat(n);
    let ok = format!("{}Subject: 99\r\n\r\n{}", headers(99), headers(150));
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], ok.as_bytes())), "250 2.0.0");
    let looping = format!("{}Subject: 100\r\n\r\nbody", headers(100));
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], looping.as_bytes())), "554 5.4.6");
    assert_eq!(server.queued().len(), 1, "the looping message is not queued");
}

#[test]
fn connection_caps_answer_421() {
    let server = Server::start("max_connections = 4\nmax_per_ip = 2\n");
    let held: Vec<Client> = (0..2).map(|_| Client::greeted(server.addr)).collect();
    let mut third = Client::connect(server.addr);
    assert_eq!(code(&third.reply()), "421 4.7.0");
    assert!(third.is_closed(Duration::from_secs(5)));
    // Another local address is a different client; it still gets in, until the global cap.
    let from_other = |_| {
        let stream = support::tcp_from("127.0.0.4", server.addr);
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    };
    let mut ok: Vec<std::net::TcpStream> = (0..2).map(from_other).collect();
    let mut over = from_other(0);
    let read_line = |s: &mut std::net::TcpStream| {
        let mut buf = [0u8; 512];
        let n = std::io::Read::read(s, &mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    for s in &mut ok {
        assert!(read_line(s).starts_with("220 "));
    }
    assert!(read_line(&mut over).starts_with("421 4.3.2"));
    drop(held);
    // Slots are freed when sessions end.
    std::thread::sleep(Duration::from_millis(300));
    Client::greeted(server.addr);
}

#[test]
fn two_hundred_concurrent_sessions_each_deliver() {
    let server = Server::start("max_connections = 300\nmax_per_ip = 300\n");
    let addr = server.addr;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                c.cmd("EHLO x");
                let reply =
                    c.mail("a@remote.test", &["alice@example.test"], format!("Subject: {i}\r\n\r\n{i}").as_bytes());
                c.cmd("QUIT");
                reply
            })
        })
        .collect();
    for t in threads {
        assert_eq!(code(&t.join().unwrap()), "250 2.0.0");
    }
    assert_eq!(server.queued().len(), 200);
}

#[test]
fn errors_are_slowed_then_the_session_is_closed() {
    let server = Server::start("error_sleep_time = 200ms\nsoft_error_limit = 3\nhard_error_limit = 5\n");
    let mut c = Client::greeted(server.addr);
    for i in 1..=5 {
        let started = Instant::now();
        assert_eq!(code(&c.cmd("FOO")), "500 5.5.2");
        let slow = started.elapsed() >= Duration::from_millis(180);
        assert_eq!(slow, i > 3, "reply {i} delayed: {slow}");
    }
    assert_eq!(code(&c.cmd("FOO")), "421 4.7.0");
    assert!(c.is_closed(Duration::from_secs(5)));
}

#[test]
fn an_idle_client_times_out_with_421() {
    let server = Server::start("command_timeout = 1s\n");
    let mut c = Client::greeted(server.addr);
    let started = Instant::now();
    assert_eq!(code(&c.reply()), "421 4.4.2");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A byte every 300 ms never completes a command; the deadline is per command.
    let mut c = Client::greeted(server.addr);
    let started = Instant::now();
    for b in b"MAIL FROM:<a@b.test>" {
        if c.is_closed(Duration::from_millis(300)) {
            break;
        }
        let _ = std::io::Write::write_all(&mut c.stream, &[*b]);
    }
    assert!(started.elapsed() < Duration::from_secs(4), "slowloris kept the session");
}

#[test]
fn a_data_trickle_is_cut_off_and_nothing_is_queued() {
    let server = Server::start("data_timeout = 1s\nmin_data_rate = 500\n");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.open_data("a@remote.test", &["alice@example.test"]);
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(6) {
        if std::io::Write::write_all(&mut c.stream, b"x").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > Duration::from_millis(1500) {
            let reply = c.reply();
            assert_eq!(code(&reply), "421 4.4.2");
            closed = true;
            break;
        }
    }
    assert!(closed);
    assert!(server.queued().is_empty());
}

/// `--check` by both programs on this configuration: (succeeded, stdout and stderr).
fn check(dir: &Path, text: &str) -> Vec<(bool, String)> {
    let conf = dir.join("check.conf");
    std::fs::write(&conf, text).unwrap();
    [support::smtpd_binary(), support::program("postern-deliver")]
        .iter()
        .map(|bin| {
            let out = std::process::Command::new(bin).arg("-c").arg(&conf).arg("--check").output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        })
        .collect()
}

#[test]
fn the_example_configuration_passes_the_check_once_its_paths_exist() {
    if support::skip_unless_root("give the example's spool to its service user") {
        return;
    }
    let dir = support::TempDir::new("example-check");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let nobody = postern::sys::lookup_user("nobody").unwrap().expect("user nobody");
    std::os::unix::fs::chown(&spool, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("postern.conf.example")).unwrap();
    std::fs::write(dir.path().join("aliases"), "postmaster: root\nroot: nobody\n").unwrap();
    let text = example
        .replace("spool = /var/spool/postern\n", &format!("spool = {}\n", spool.display()))
        .replace("user = postern\n", "user = nobody\n")
        .replace("aliases = /etc/aliases\n", &format!("aliases = {}/aliases\n", dir.path().display()));
    assert_ne!(text, example);
    for (ok, out) in check(dir.path(), &text) {
        assert!(ok && out.contains("configuration ok"), "{out}");
    }
    // The same spool, not writable by the service user: both programs say so.
    std::os::unix::fs::chown(&spool, Some(0), Some(0)).unwrap();
    for (ok, out) in check(dir.path(), &text) {
        assert!(!ok && out.contains("is not writable by user `nobody`"), "{out}");
    }
}

#[test]
fn the_check_names_each_thing_that_would_fail_at_run_time() {
    let dir = support::TempDir::new("check");
    let d = dir.path();
    std::fs::write(d.join("a-file"), "").unwrap();
    std::fs::write(d.join("aliases"), "root: admin\nthis line has no colon\n").unwrap();
    std::fs::write(d.join("garbage.pem"), "not a certificate\n").unwrap();
    let spool = d.join("spool").display().to_string();
    for (extra, both, smtpd_only, deliver_only) in [
        ("user = no-such-user-here\n", "user: no user `no-such-user-here`", "", ""),
        (&format!("spool = {}/a-file/spool\n", d.display())[..], "is not a directory", "", ""),
        (&format!("aliases = {}/aliases\n", d.display())[..], "aliases:2:", "", ""),
        (&format!("mailboxes = {}/missing\n", d.display())[..], "missing", "", ""),
        (
            &format!("tls_cert = {0}/garbage.pem\ntls_key = {0}/garbage.pem\n", d.display())[..],
            "",
            "garbage.pem: not a PEM certificate chain",
            "",
        ),
        (
            &format!("relayhost = [127.0.0.1]:25\nrelayhost_auth_file = {}/missing-secret\n", d.display())[..],
            "",
            "",
            "missing-secret",
        ),
    ] {
        let text = format!("spool = {spool}\n{extra}").replacen(&format!("spool = {spool}\nspool"), "spool", 1);
        let results = check(d, &text);
        for (i, (ok, out)) in results.iter().enumerate() {
            let want = [both, if i == 0 { smtpd_only } else { deliver_only }].concat();
            if want.is_empty() {
                assert!(*ok, "{extra}: {out}");
            } else {
                assert!(!ok && out.contains(&want), "{extra}: wanted `{want}` in\n{out}");
            }
        }
    }
}

#[test]
fn a_bad_configuration_names_file_line_and_key() {
    let dir = support::TempDir::new("badconf");
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "listen = 127.0.0.1:0\nmax_per_ip = lots\n").unwrap();
    let out = std::process::Command::new(support::smtpd_binary()).arg("-c").arg(&conf).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{}:2: max_per_ip: `lots` is not a whole number", conf.display())), "{stderr}");
}

#[test]
fn a_client_that_leaves_right_after_the_dot_still_gets_its_message_queued_once() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.open_data("a@remote.test", &["alice@example.test"]);
    c.send(b"Subject: d2\r\n\r\nbye\r\n.\r\n");
    drop(c); // never reads the 250
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.queued().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.queued().len(), 1);
}

#[test]
fn a_connection_lost_before_the_dot_queues_nothing() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.open_data("a@remote.test", &["alice@example.test"]);
    c.send(b"Subject: d3\r\n\r\nhalf a message\r\n");
    drop(c); // the text never ends
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.queued().is_empty());
    assert!(support::list(&server.spool().join("tmp")).is_empty());
    assert!(server.log_with("disconnect from unknown[127.0.0.1]").contains("disconnect from unknown[127.0.0.1]"));
}

#[test]
fn two_hundred_thousand_recipients_keep_memory_bounded() {
    // Past the limit every RCPT gets 452 4.5.3; nothing grows without bound.
    let server = Server::start("max_recipients = 1000\n");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.cmd("MAIL FROM:<a@remote.test>");
    let before = server.rss_kib();
    let batch = "RCPT TO:<alice@example.test>\r\n".repeat(1000);
    let mut codes = std::collections::HashMap::<String, usize>::new();
    for _ in 0..200 {
        c.send(batch.as_bytes());
        for _ in 0..1000 {
            *codes.entry(code(&c.reply())).or_default() += 1;
        }
    }
    assert_eq!(codes.get("250 2.1.5"), Some(&200_000), "{codes:?}");
    // Duplicates of one address count once, so they never reach the limit; distinct ones do.
    let distinct: String = (0..1100).map(|i| format!("RCPT TO:<alice+{i}@example.test>\r\n")).collect();
    c.send(distinct.as_bytes());
    let replies: Vec<String> = (0..1100).map(|_| code(&c.reply())).collect();
    assert!(replies[..999].iter().all(|r| r == "250 2.1.5"), "{:?}", &replies[990..1000]);
    assert!(replies[999..].iter().all(|r| r == "452 4.5.3"));
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(grown < 20 * 1024, "RSS grew {grown} KiB");
    assert_eq!(code(&c.cmd("DATA")), "354");
}

#[test]
fn an_endless_header_is_streamed_with_bounded_memory() {
    // 200,000 continuation lines in one header field.
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let before = server.rss_kib();
    let body = format!("X-Long: start\r\n{}Subject: n2\r\n\r\nbody", " x\r\n".repeat(200_000));
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], body.as_bytes())), "250 2.0.0");
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn a_client_that_stops_reading_is_cut_off_one_timeout_after_the_write_stalls() {
    let server = Server::start("command_timeout = 2s\njunk_command_limit = 100000000\n");
    let c = Client::greeted(server.addr);
    let mut stream = c.stream.try_clone().unwrap();
    stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    // Commands keep coming and no reply is read: the server's writes fill both buffers.
    let writer = std::thread::spawn(move || {
        let batch = b"NOOP\r\n".repeat(10_000);
        for _ in 0..2_000 {
            use std::io::Write;
            match stream.write_all(&batch) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
            if started.elapsed() > Duration::from_secs(20) {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log().contains("disconnect from") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    assert!(server.log().contains("disconnect from"), "still connected after {took:?}");
    eprintln!("a client that stopped reading was cut off after {took:.2?} (command_timeout 2s)");
    assert!(took < Duration::from_millis(3500), "{took:?}: the server waited more than one timeout");
    drop(c);
    writer.join().unwrap();
}

#[test]
fn with_fewer_descriptors_than_connections_every_client_gets_220_or_421() {
    let dir = support::TempDir::new("nofile");
    let config = support::config_with(dir.path(), "max_connections = 1000\nmax_per_ip = 1000\n");
    let server = Server::start_wrapped(dir, &config, &["prlimit", "--nofile=64:64"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("serving at most") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(server.log().contains("max_connections = 1000 needs 2032 descriptors"), "{}", server.log());
    assert!(server.log().contains("the limit (RLIMIT_NOFILE) is 64: serving at most 16 connections"));
    let (greeted, refused) = first_lines_of_held_clients(server.addr, 40);
    assert_eq!((greeted, refused), (16, 24), "the lowered cap holds; the rest hear 421");
}

/// A descriptor limit larger than the drafts' share serves a session for each descriptor
/// beyond it: with 2,100, 1,044 sessions (2,068 after the reserve, 1,024 of them kept for the
/// files of messages being taken), not the half it served when every session counted two.
#[test]
fn a_large_descriptor_limit_serves_a_session_per_descriptor_beyond_the_drafts_share() {
    let dir = support::TempDir::new("nofile-large");
    let config = support::config_with(dir.path(), "max_connections = 5000\nmax_per_ip = 5000\n");
    let server = Server::start_wrapped(dir, &config, &["prlimit", "--nofile=2100:2100"]);
    let log = server.log_with("serving at most");
    assert!(log.contains("max_connections = 5000 needs 6056 descriptors"), "{log}");
    assert!(log.contains("the limit (RLIMIT_NOFILE) is 2100: serving at most 1044 connections"), "{log}");
}

/// A message that finds no descriptor left for its file (the soft limit lowered under the
/// running server to the lowest descriptor it has free) is read to its end and answered
/// `451 4.3.0`; nothing is queued, the session goes on, and once descriptors are back the same
/// session sends it again and it is queued.
#[test]
fn a_message_that_finds_no_descriptor_for_its_file_hears_451_and_may_come_again() {
    let server = Server::start(""); // instant delivery off: the message stays in the spool
    let pid = server.pid().to_string();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_string();
    let (soft, hard) = match line.split_whitespace().collect::<Vec<_>>()[..] {
        [.., soft, hard, _] => (soft.to_string(), hard.to_string()),
        _ => panic!("{line}"),
    };
    let set_soft = |soft: &str| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:{hard}")])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    assert_eq!(code(&c.cmd("MAIL FROM:<a@remote.test>")), "250 2.1.0");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>")), "250 2.1.5");
    let open: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    set_soft(&lowest_free.to_string());
    assert_eq!(code(&c.cmd("DATA")), "354");
    let reply = c.mail_text(b"Subject: one\r\n\r\nno room for me\r\n");
    assert_eq!(reply, "451 4.3.0 Error: queue file write error");
    assert!(server.queued().is_empty());
    let log = server.log_with("cannot queue a message");
    assert!(log.contains("cannot queue a message: I/O error: Too many open files"), "{log}");
    set_soft(&soft);
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], b"Subject: one\r\n\r\nagain")), "250 2.0.0");
    assert_eq!(server.queued().len(), 1);
}

/// Opens `n` clients one after another and keeps them open; each must get its first line,
/// 220 or 421, within a second. Returns how many got each.
fn first_lines_of_held_clients(addr: std::net::SocketAddr, n: usize) -> (usize, usize) {
    let mut held = Vec::new();
    let (mut greeted, mut refused) = (0, 0);
    for i in 0..n {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        let started = Instant::now();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or_else(|e| panic!("client {i}: no reply: {e}"));
        assert!(started.elapsed() < Duration::from_secs(1), "client {i} waited {:?}", started.elapsed());
        match line.get(..4) {
            Some("220 ") => greeted += 1,
            Some("421 ") => refused += 1,
            _ => panic!("client {i}: {line:?}"),
        }
        held.push(stream);
    }
    (greeted, refused)
}

#[test]
fn under_inetd_a_start_that_fails_still_tells_the_client_421() {
    let dir = support::TempDir::new("inetd-fail");
    let conf = dir.path().join("postern.conf");
    let spool = dir.path().join("spool");
    std::fs::write(
        &conf,
        format!("spool = {}\ntls_cert = /nonexistent.pem\ntls_key = /nonexistent.pem\n", spool.display()),
    )
    .unwrap();
    let out = std::process::Command::new(support::smtpd_binary())
        .arg("-c")
        .arg(&conf)
        .arg("--inetd")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("421 4.3.0 ") && said.ends_with("\r\n"), "{said:?}");
}

#[test]
fn when_accept_runs_out_of_descriptors_the_client_still_hears_421() {
    // The limit is lowered under the running server, past what its cap was fitted to, so that
    // accept() itself fails with EMFILE.
    let server = Server::start("max_connections = 1000\nmax_per_ip = 1000\n");
    let lowered = std::process::Command::new("prlimit")
        .args(["--pid", &server.pid().to_string(), "--nofile=40:40"])
        .status()
        .unwrap();
    assert!(lowered.success());
    let (greeted, refused) = first_lines_of_held_clients(server.addr, 40);
    assert!(greeted > 0 && refused > 0, "{greeted} greeted, {refused} refused");
    let log = server.log_with("a client was told 421");
    assert!(log.contains("a client was told 421"), "{log}");
}

/// A stranger on port 25 who names one of our domains as the sender is refused at MAIL, and
/// the log has Postfix's NOQUEUE line; a trusted client, or the same stranger with the guard
/// off, is not.
#[test]
fn our_own_domains_are_refused_as_senders_from_strangers() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO mx.remote.test");
    let reply = c.cmd("MAIL FROM:<boss@Example.Test>");
    assert_eq!(reply, "550 5.7.1 <boss@Example.Test>: Sender address rejected: not logged in");
    assert_eq!(code(&c.cmd("RCPT TO:<alice@example.test>")), "503 5.5.1");
    assert_eq!(code(&c.cmd("MAIL FROM:<boss@remote.test>")), "250 2.1.0", "the session goes on");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains("NOQUEUE: reject: MAIL from")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        line.ends_with(
            "NOQUEUE: reject: MAIL from unknown[127.0.0.1]: 550 5.7.1 <boss@Example.Test>: Sender address \
             rejected: not logged in; from=<boss@Example.Test> proto=ESMTP helo=<mx.remote.test>"
        ),
        "{line}"
    );
    for extra in ["trusted_networks = 127.0.0.0/8\n", "reject_local_senders = off\n"] {
        let server = Server::start(extra);
        let mut c = Client::greeted(server.addr);
        c.cmd("EHLO mail.example.test");
        assert_eq!(code(&c.cmd("MAIL FROM:<boss@example.test>")), "250 2.1.0", "{extra}");
    }
}

/// RFC 8601 §5: an Authentication-Results: field naming this host that the client wrote is
/// gone from what is queued; ours is on top, and a field naming another host stays.
#[test]
fn a_forged_authentication_results_field_is_removed() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    let forged = "Authentication-Results: MAIL.example.test;\r\n\tspf=pass smtp.mailfrom=boss@example.test\r\n\
                  Authentication-Results: mx.other.test; spf=fail smtp.mailfrom=a@remote.test\r\n\
                  authentication-results: (ours, they say) mail.example.test; dkim=pass\r\n\
                  Subject: trust me\r\n\r\nAuthentication-Results: mail.example.test; in the body\r\n";
    let reply = c.mail("a@remote.test", &["alice@example.test"], forged.as_bytes());
    assert_eq!(code(&reply), "250 2.0.0");
    let message = String::from_utf8(support::message_of(&server.queued()[0])).unwrap();
    assert!(message.starts_with("Authentication-Results: mail.example.test (loopback client, not checked); none\r\n"));
    assert_eq!(message.matches("Authentication-Results:").count(), 3, "{message}");
    assert!(message.contains("\r\nAuthentication-Results: mx.other.test; spf=fail"), "{message}");
    assert!(!message.contains("spf=pass") && !message.contains("dkim=pass"), "{message}");
    assert!(message.contains("\r\n\r\nAuthentication-Results: mail.example.test; in the body\r\n"), "{message}");
    let size: u64 = std::fs::read_to_string(&server.queued()[0])
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("size: ").map(|s| s.trim().parse().unwrap()))
        .unwrap();
    assert_eq!(size, message.len() as u64, "the envelope's size is what was written");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server.log().contains("removed 2 Authentication-Results field(s) naming this host") {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}
