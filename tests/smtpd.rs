//! The SMTP server over real sockets: golden dialogues, then behaviour a transcript cannot show.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Client, Server, code};

/// Turns `\r`, `\n`, `\t`, `\\` and `\xNN` into bytes.
fn unescape(text: &str) -> Vec<u8> {
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
                    out.push(u8::from_str_radix(&text[i + 2..i + 4], 16).unwrap());
                    i += 2;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Replays one transcript: `C:` sends a line (CRLF added), `R:` sends raw escaped bytes,
/// `S:` expects the next reply's last line to start with the text, `X:` expects the server
/// to close, `Q: n` expects n messages in spool/new. `# config:` lines extend the configuration.
fn replay(path: &Path) {
    let script = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let mut extra = String::from("error_sleep_time = 0s\n");
    for line in script.lines().filter_map(|l| l.strip_prefix("# config: ")) {
        extra += line;
        extra += "\n";
    }
    let server = Server::start(&extra);
    let mut client = Client::greeted(server.addr);
    for (n, line) in script.lines().enumerate() {
        let at = format!("{name}:{}", n + 1);
        if let Some(text) = line.strip_prefix("C: ") {
            client.send(format!("{text}\r\n").as_bytes());
        } else if let Some(raw) = line.strip_prefix("R: ") {
            client.send(&unescape(raw));
        } else if let Some(want) = line.strip_prefix("S: ") {
            let reply = client.reply();
            let last = reply.lines().last().unwrap_or("");
            let whole_or_last =
                reply.lines().any(|l| l.starts_with(want) && want.contains('-')) || last.starts_with(want);
            assert!(whole_or_last, "{at}: expected `{want}`, got `{reply}`\nlog:\n{}", server.log());
            if want.starts_with(['4', '5']) {
                let status = last.split_whitespace().nth(1).unwrap_or("");
                assert_eq!(status.chars().next(), want.chars().next(), "{at}: enhanced class differs: {last}");
            }
        } else if line == "X:" {
            assert!(client.is_closed(Duration::from_secs(5)), "{at}: connection still open");
        } else if let Some(count) = line.strip_prefix("Q: ") {
            let want: usize = count.parse().unwrap();
            assert_eq!(server.queued().len(), want, "{at}: messages in spool/new");
        }
    }
}

#[test]
fn transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files = support::list(&dir);
    files.retain(|f| f.extension().is_some_and(|e| e == "txt"));
    assert!(files.len() >= 8, "transcripts missing");
    for file in files {
        replay(&file);
    }
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
        "Received: from client.test (unknown [127.0.0.1])\r\n\tby mail.example.test (postern) with ESMTP id "
    ));
    assert!(received.contains(&format!("id {id}\r\n\tfor <alice@example.test>;\r\n\t")));
}

#[test]
fn pipelined_commands_get_every_reply_without_waiting_for_data() {
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.test");
    // F9: MAIL, RCPT, RCPT in one write; all three replies must come without DATA.
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
    // L4: a 512-octet NOOP line is fine.
    let noop = format!("NOOP {}", "a".repeat(505));
    assert_eq!(noop.len() + 2, 512);
    assert_eq!(code(&c.cmd(&noop)), "250 2.0.0");
    // Q2: 3000 X then QUIT on the same line: exactly one 500, no 221.
    let mut line = vec![b'X'; 3000];
    line.extend_from_slice(b"QUIT\r\nNOOP\r\n");
    c.send(&line);
    assert_eq!(code(&c.reply()), "500 5.5.2");
    assert_eq!(code(&c.reply()), "250 2.0.0");
    // A4: EHLO with 10 KB.
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
        c.send(&chunk); // Q1 at 64 MiB instead of 5 GiB: no LF, ever
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
    // N5: the next transaction works normally.
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
    assert_eq!(server.queued().len(), 1, "the looping message is not queued (D4)");
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
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&"127.0.0.4:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        socket.connect(&server.addr.into()).unwrap();
        let stream: std::net::TcpStream = socket.into();
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
    // DS1: a byte every 300 ms never completes a command; the deadline is per command.
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

#[test]
fn the_example_configuration_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("postern.conf.example");
    let out =
        std::process::Command::new(support::smtpd_binary()).arg("-c").arg(&example).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
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
    drop(c); // D2: never reads the 250
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
    drop(c); // D3
    std::thread::sleep(Duration::from_millis(300));
    assert!(server.queued().is_empty());
    assert!(support::list(&server.spool().join("tmp")).is_empty());
    assert!(server.log().contains("disconnect from [127.0.0.1]"));
}

#[test]
fn two_hundred_thousand_recipients_keep_memory_bounded() {
    // N1: past the limit every RCPT gets 452 4.5.3; nothing grows without bound.
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
    // N2: 200,000 continuation lines in one header field.
    let server = Server::start("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let before = server.rss_kib();
    let body = format!("X-Long: start\r\n{}Subject: n2\r\n\r\nbody", " x\r\n".repeat(200_000));
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], body.as_bytes())), "250 2.0.0");
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB");
}
