//! The server as an operator runs it: inetd, socket activation, privilege drop, crashes, full disks,
//! descriptor exhaustion, and real clients (swaks, Python's smtplib).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern::spool::Envelope;
use support::{Client, Server, TempDir, base_config, code};

fn require_tool(name: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap().status.success();
    assert!(found, "{name} is missing: `make test` installs it (tools/ensure-test-deps)");
}

/// Every file in spool/new parses and holds as many message bytes as its envelope says.
fn assert_queue_whole(spool: &Path) {
    for file in support::list(&spool.join("new")) {
        let bytes = std::fs::read(&file).unwrap();
        let (envelope, head) = Envelope::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(envelope.size, (bytes.len() - head) as u64, "{} is partial", file.display());
    }
}

#[test]
fn inetd_mode_runs_one_session_over_a_pipe() {
    let dir = TempDir::new("inetd");
    let conf = dir.path().join("postern.conf");
    // The automatic destination: syslog (here a socket the test reads), facility mail.
    let syslog = dir.path().join("log");
    let socket = std::os::unix::net::UnixDatagram::bind(&syslog).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let config = base_config(dir.path()).replace("log = stderr\n", "")
        + &format!("trusted_networks = 127.0.0.0/8\nsyslog_socket = {}\n", syslog.display());
    std::fs::write(&conf, config).unwrap();
    let mut child = Command::new(support::smtpd_binary())
        .args(["--inetd", "-c"])
        .arg(&conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // Relay row 42: a pipe has no peer address, so it is never trusted.
    input
        .write_all(
            b"EHLO pipe.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<relaytest@remote.test>\r\n\
              RCPT TO:<alice@example.test>\r\nDATA\r\nSubject: inetd\r\n\r\nover a pipe\r\n.\r\nQUIT\r\n",
        )
        .unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = text.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| &l[..3]).collect();
    assert_eq!(codes, ["220", "250", "250", "554", "250", "354", "250", "221"], "{text}");
    assert!(out.stderr.is_empty(), "inetd mode wrote to stderr: {}", String::from_utf8_lossy(&out.stderr));
    let queued = support::list(&dir.path().join("spool/new"));
    assert_eq!(queued.len(), 1);
    let envelope = std::fs::read_to_string(&queued[0]).unwrap();
    assert!(envelope.contains("client: unknown\n") && envelope.contains("rcpt: <alice@example.test>\n"));
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        let line = String::from_utf8_lossy(&buf[..n]).to_string();
        let done = line.contains("disconnect from");
        lines.push(line);
        if done {
            break;
        }
    }
    // mail.info is <22>; the refused relay recipient is logged as Postfix logs it.
    assert!(lines.iter().all(|l| l.starts_with("<22>postern/smtpd[")), "{lines:#?}");
    let reject = "NOQUEUE: reject: RCPT from unknown[unknown]: 554 5.7.1 <relaytest@remote.test>: Relay access denied; \
                  from=<a@remote.test> to=<relaytest@remote.test> proto=ESMTP helo=<pipe.test>";
    assert!(lines.iter().any(|l| l.ends_with(reject)), "{lines:#?}");
}

/// systemd socket activation (sd_listen_fds(3)), as `systemd-socket-activate` does it: the
/// listener passed as descriptor 3 is served, the first client (whose connection started the
/// daemon) and the next, after the daemon has started itself again to set its thread stack
/// cache: in the same process, which LISTEN_PID names, with the same descriptors and name.
#[test]
fn socket_activation_uses_the_passed_socket() {
    require_tool("systemd-socket-activate");
    let dir = TempDir::new("activate");
    let conf = dir.path().join("postern.conf");
    // `listen` names a port that must not be used: the passed socket wins.
    std::fs::write(&conf, base_config(dir.path()) + "").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(support::smtpd_binary())
        .arg("-c")
        .arg(&conf)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // systemd-socket-activate starts the program on the first connection.
    for n in 0..2 {
        let mut c = Client::greeted(addr);
        c.cmd("EHLO x");
        assert_eq!(
            code(&c.mail("a@remote.test", &["alice@example.test"], format!("activated {n}").as_bytes())),
            "250 2.0.0"
        );
    }
    // The daemon (the process whose arguments name this configuration), under its own name
    // for ps and pkill.
    let daemon = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let args = std::fs::read(p.join("cmdline")).unwrap_or_default();
            args.split(|&b| b == 0).any(|a| a == conf.as_os_str().as_encoded_bytes())
        })
        .expect("the daemon");
    let comm = std::fs::read_to_string(daemon.join("comm")).unwrap();
    assert_eq!(comm.trim(), "postern-smtpd");
    let _ = Command::new("kill").arg(daemon.file_name().unwrap()).status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(support::list(&dir.path().join("spool/new")).len(), 2);
    assert!(log.lock().unwrap().contains(&format!("listening on 127.0.0.1:{port}")), "{}", log.lock().unwrap());
}

#[test]
fn started_as_root_it_drops_to_the_configured_user() {
    if support::skip_unless_root("start as root") {
        return;
    }
    let dir = TempDir::new("privdrop");
    let nobody = postern::sys::lookup_user("nobody").unwrap().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let config = base_config(dir.path()) + "user = nobody\n";
    let server = Server::start_in(dir, &config);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], b"as nobody")), "250 2.0.0");
    // Every thread, after the drop.
    for task in support::list(Path::new(&format!("/proc/{}/task", server.pid()))) {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        let ids = |line: String| line.split_whitespace().skip(1).map(str::to_string).collect::<Vec<_>>();
        assert_eq!(ids(field("Uid:")), vec![nobody.uid.to_string(); 4], "{}", task.display());
        assert_eq!(ids(field("Gid:")), vec![nobody.gid.to_string(); 4]);
        assert!(ids(field("Groups:")).is_empty());
        for cap in ["CapEff:", "CapPrm:", "CapAmb:"] {
            assert_eq!(ids(field(cap)), ["0000000000000000"], "{cap}");
        }
    }
    let file = &server.queued()[0];
    let meta = std::fs::metadata(file).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), nobody.uid);
    assert!(server.log().contains("running as nobody"));
}

#[test]
fn kill_9_mid_transaction_loses_no_acknowledged_message() {
    let server = Server::start("max_connections = 100\nmax_per_ip = 100\n");
    let addr = server.addr;
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let stop = Instant::now() + Duration::from_millis(1500);
    let clients: Vec<_> = (0..50)
        .map(|t| {
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                c.cmd("EHLO crash.test");
                for n in 0..10_000 {
                    if Instant::now() > stop + Duration::from_secs(5) {
                        return;
                    }
                    let body = format!("Subject: {t}-{n}\r\n\r\n{}\r\n", format!("thread {t} message {n} ").repeat(50));
                    if !c.cmd("MAIL FROM:<a@remote.test>").starts_with("250")
                        || !c.cmd("RCPT TO:<alice@example.test>").starts_with("250")
                        || !c.cmd("DATA").starts_with("354")
                    {
                        return;
                    }
                    // Send in two parts with a pause, so some sessions are mid-DATA at the kill.
                    let (head, tail) = body.as_bytes().split_at(body.len() / 2);
                    let _ = c.stream.write_all(head);
                    std::thread::sleep(Duration::from_millis(2));
                    let _ = c.stream.write_all(tail);
                    let _ = c.stream.write_all(b".\r\n");
                    let reply = c.reply();
                    match reply.strip_prefix("250 2.0.0 Ok: queued as ") {
                        Some(id) => acknowledged.lock().unwrap().push((id.to_string(), body.into_bytes())),
                        None => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(stop - Instant::now());
    let dir = server.kill9();
    for c in clients {
        c.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap();
    assert!(acknowledged.len() > 50, "too few messages before the kill: {}", acknowledged.len());
    let spool = dir.path().join("spool");
    for (id, body) in acknowledged.iter() {
        let file = spool.join("new").join(id);
        assert!(file.exists(), "{id} was acknowledged but is not in new/");
        assert_eq!(&support::body_of(&file), body, "{id} differs");
    }
    assert_queue_whole(&spool);
    // Restart on the same spool: what a dead writer left in tmp/ is removed.
    let config = std::fs::read_to_string(dir.path().join("postern.conf")).unwrap();
    let restarted = Server::start_in(dir, &config);
    Client::greeted(restarted.addr);
    assert!(support::list(&restarted.spool().join("tmp")).is_empty());
    assert!(restarted.queued().len() >= acknowledged.len());
}

#[test]
fn fifty_sessions_of_twenty_messages_make_a_thousand_files() {
    let server = Server::start("max_connections = 100\nmax_per_ip = 100\n");
    let addr = server.addr;
    let threads: Vec<_> = (0..50)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                c.cmd("EHLO k3");
                (0..20)
                    .map(|n| c.mail("a@remote.test", &["alice@example.test"], format!("{t}/{n}").as_bytes()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in threads {
        for reply in t.join().unwrap() {
            assert_eq!(code(&reply), "250 2.0.0");
            ids.insert(reply);
        }
    }
    assert_eq!(ids.len(), 1000);
    assert_eq!(server.queued().len(), 1000);
}

/// The commit as strace sees it: the draft made (an anonymous file), its size and check
/// written, its name in new/ given by linkat (never a plain rename, which could overwrite),
/// then the fsync of the file that makes both durable (on this filesystem; others get an
/// fsync of new/ too), and only then the 250.
#[test]
fn the_reply_comes_only_after_the_renamed_file_is_synced() {
    require_tool("strace");
    let dir = TempDir::new("strace");
    let trace_dir = TempDir::new("strace-out");
    let trace = trace_dir.path().join("trace");
    let config = base_config(dir.path());
    let trace_arg = trace.to_str().unwrap().to_string();
    let wrapper = [
        "strace",
        "-f",
        // Each descriptor with its path: the draft is made and named relative to new/'s.
        "-y",
        "-e",
        "trace=openat,pwrite64,fsync,fdatasync,syncfs,link,linkat,rename,renameat2,write,sendto",
        "-o",
        &trace_arg,
    ];
    let server = Server::start_wrapped(dir, &config, &wrapper);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let reply = c.mail("a@remote.test", &["alice@example.test"], b"synced");
    let id = reply.rsplit(' ').next().unwrap().to_string();
    c.cmd("QUIT");
    std::thread::sleep(Duration::from_millis(200));
    drop(server);
    let text = std::fs::read_to_string(&trace).unwrap();
    let position = |what: &dyn Fn(&str) -> bool, from: usize| {
        text.lines().enumerate().skip(from).find(|(_, l)| what(l)).map(|(i, _)| i).unwrap_or_else(|| panic!("{text}"))
    };
    // An anonymous file made in new/ (O_TMPFILE), or one named in tmp/ where there are none.
    let open = position(
        &|l| {
            l.contains("openat(")
                && ((l.contains("spool/new>") && l.contains("O_TMPFILE"))
                    || (l.contains(&format!("tmp/{id}")) && l.contains("O_EXCL")))
        },
        0,
    );
    // `= 7</.../spool/new/#1234 (deleted)>`: the descriptor's number.
    let returned = text.lines().nth(open).unwrap().rsplit("= ").next().unwrap();
    let fd: String = returned.chars().take_while(char::is_ascii_digit).collect();
    let on_draft = |l: &str, call: &str| ["<", ",", ")"].iter().any(|end| l.contains(&format!("{call}({fd}{end}")));
    let digits = position(&|l| on_draft(l, "pwrite64") && l.contains("\\ncheck: "), open);
    let named = |l: &str| l.contains(&format!("new/{id}")) || l.contains(&format!("spool/new>, \"{id}\""));
    let link = position(&|l| (l.contains("link") || l.contains("rename")) && named(l), digits);
    assert!(!text.lines().nth(link).unwrap().contains("rename("), "a plain rename could overwrite");
    let file_sync = position(&|l| on_draft(l, "fsync"), link);
    let reply_sent = position(&|l| l.contains("250 2.0.0 Ok: queued as"), 0);
    assert!(open < digits && digits < link && link < file_sync && file_sync < reply_sent, "{text}");
}

/// Killed after the rename into new/ and before the fsync that makes it durable (crash point
/// `after-commit-name`): the client heard no 250, the message is whole in new/ (all of it
/// was written before the rename), and the next delivery run delivers it, once.
#[test]
fn killed_between_the_rename_and_its_fsync_the_message_is_whole_and_delivered_once() {
    let dir = TempDir::new("commit-rename");
    let config = base_config(dir.path());
    let mut server = Server::start_wrapped(dir, &config, &["env", "POSTERN_CRASH_AT=after-commit-name"]);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let reply = c.mail("a@remote.test", &["alice@example.test"], b"Subject: cut\r\n\r\nrenamed, not synced");
    assert!(!reply.contains("250"), "no 250 before the fsync: {reply}");
    assert!(server.exits_within(Duration::from_secs(10)), "the crash point stops the server");
    assert_queue_whole(&server.spool());
    assert_eq!(server.queued().len(), 1);
    let out = support::deliver(&server.dir.path().join("postern.conf"), None, &[]);
    let alice = support::maildir(&server.dir.path().join("maildirs/alice"));
    assert_eq!(alice.len(), 1, "{out}");
    assert!(alice[0].trim_end().ends_with("renamed, not synced"), "{}", alice[0]);
    assert!(server.queued().is_empty() && support::waiting(&server.spool()).is_empty(), "{out}");
}

#[test]
fn a_message_written_over_a_spare_file_is_its_own_and_a_kill_while_writing_it_loses_nothing() {
    let dir = TempDir::new("spare");
    let config = base_config(dir.path());
    let server = Server::start_in(dir, &config);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let mut long = b"Subject: long\r\n\r\n".to_vec();
    for _ in 0..400 {
        long.extend_from_slice(&[b'x'; 76]);
        long.extend_from_slice(b"\r\n");
    }
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], &long)), "250 2.0.0");
    drop(c);
    let conf = server.dir.path().join("postern.conf");
    let out = support::deliver(&conf, None, &[]);
    let spool = server.spool();
    // The delivered message's file is kept, to be written over.
    let spares = support::list(&spool.join("spare"));
    assert_eq!(spares.len(), 1, "{out}");
    let inode = std::fs::metadata(&spares[0]).unwrap().ino();
    assert!(std::fs::metadata(&spares[0]).unwrap().len() > 30_000);

    // Killed once the next message is written over it, before it is named in new/.
    let dir = server.kill9();
    let mut server = Server::start_wrapped(dir, &config, &["env", "POSTERN_CRASH_AT=spare-draft-written"]);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let reply = c.mail("a@remote.test", &["alice@example.test"], b"Subject: cut\r\n\r\nnever queued");
    assert!(!reply.contains("250"), "{reply}");
    assert!(server.exits_within(Duration::from_secs(10)), "the crash point stops the server");
    assert!(server.queued().is_empty(), "nothing queued: the client heard no 250");
    assert_eq!(support::list(&spool.join("spare")), spares, "the spare is left as it was named");

    let dir = server.kill9();
    let server = Server::start_in(dir, &config);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let reply = c.mail("a@remote.test", &["alice@example.test"], b"Subject: short\r\n\r\nwritten over");
    assert_eq!(code(&reply), "250 2.0.0");
    let queued = server.queued();
    assert_eq!(queued.len(), 1);
    assert_eq!(std::fs::metadata(&queued[0]).unwrap().ino(), inode, "written over the spare");
    assert!(support::list(&spool.join("spare")).is_empty());
    assert_queue_whole(&spool);
    let out = support::deliver(&conf, None, &[]);
    let mut alice = support::maildir(&server.dir.path().join("maildirs/alice"));
    alice.sort_by_key(|m| m.len());
    assert_eq!(alice.len(), 2, "{out}");
    assert!(alice[0].contains("Subject: short") && alice[0].trim_end().ends_with("written over"), "{}", alice[0]);
    assert!(!alice[0].contains("xxxx") && !alice[0].contains("never queued"), "{}", alice[0]);
    assert!(alice[1].contains("Subject: long"));
    assert!(server.queued().is_empty() && support::waiting(&spool).is_empty(), "{out}");
}

#[test]
fn a_full_disk_answers_452_and_leaves_nothing_behind() {
    if support::skip_unless_root("mount a small tmpfs") {
        return;
    }
    let dir = TempDir::new("diskfull");
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&spool).status().unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(spool.clone());
    let config = base_config(dir.path());
    let server = Server::start_in(dir, &config);
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    let big = vec![b'x'; 3 << 20];
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], &big)), "452 4.3.1");
    assert!(server.queued().is_empty());
    assert!(support::list(&spool.join("tmp")).is_empty(), "a partial file was left in tmp/");
    assert_eq!(code(&c.mail("a@remote.test", &["alice@example.test"], b"small")), "250 2.0.0");
    assert_queue_whole(&spool);
}

#[test]
fn a_small_descriptor_limit_neither_spins_nor_sticks() {
    let dir = TempDir::new("emfile");
    let config = base_config(dir.path()) + "max_connections = 200\nmax_per_ip = 200\n";
    let server = Server::start_wrapped(dir, &config, &["prlimit", "--nofile=32"]);
    let cpu = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<u64> =
            stat.rsplit(')').next().unwrap().split_whitespace().filter_map(|f| f.parse().ok()).collect();
        fields[10] + fields[11] // utime + stime, in clock ticks
    };
    let held: Vec<std::net::TcpStream> =
        (0..40).filter_map(|_| std::net::TcpStream::connect(server.addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu(server.pid());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu(server.pid()) - before;
    assert!(used < 40, "the server spun: {used} ticks in 2 s");
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    let mut c = Client::greeted(server.addr);
    assert_eq!(code(&c.cmd("NOOP")), "250 2.0.0");
    // The cap was fitted to the 32 descriptors at start, so accept() never ran dry.
    assert!(server.log().contains("serving at most"), "{}", server.log());
}

/// Chunks of 60,000 octets of commands: twice what the socket buffers on both sides can hold
/// at their largest (the last field of tcp_rmem and tcp_wmem), so that a server that reads on
/// without its replies being read is always found out.
fn flood_chunks() -> usize {
    let largest = |file: &str| {
        std::fs::read_to_string(file).ok().and_then(|t| t.split_whitespace().last()?.parse::<usize>().ok())
    };
    let buffers = largest("/proc/sys/net/ipv4/tcp_rmem").unwrap_or(6 << 20)
        + largest("/proc/sys/net/ipv4/tcp_wmem").unwrap_or(4 << 20);
    (2 * 2 * buffers).div_ceil(60_000).max(100)
}

#[test]
fn a_client_that_never_reads_is_cut_off_with_bounded_memory() {
    // A pipelining flood whose replies are never read. The server's reply writes block,
    // the write timeout fires, and the session ends; replies are never queued without limit.
    let server = Server::start("command_timeout = 1s\njunk_command_limit = 100000000\n");
    let mut c = Client::greeted(server.addr);
    let before = server.rss_kib();
    let mut writer = c.stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        writer.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let chunk = b"NOOP\r\n".repeat(10_000);
        (0..flood_chunks()).take_while(|_| writer.write_all(&chunk).is_ok()).count()
    });
    let chunks_written = flood.join().unwrap();
    assert!(chunks_written < flood_chunks(), "the server read every command without its replies being read");
    let started = Instant::now();
    assert!(c.is_closed(Duration::from_secs(20)), "the session was not ended");
    assert!(started.elapsed() < Duration::from_secs(20));
    let grown = server.peak_rss_kib().saturating_sub(before);
    assert!(grown < 4096, "RSS grew {grown} KiB");
    Client::greeted(server.addr);
}

#[test]
fn swaks_sends_mail_that_lands_in_the_spool() {
    require_tool("swaks");
    let server = Server::start("");
    let out = Command::new("swaks")
        .args(["--server", &server.addr.to_string(), "--from", "sender@remote.test", "--to", "alice@example.test"])
        .args(["--header", "Subject: from swaks", "--body", "sent by swaks"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let files = server.queued();
    assert_eq!(files.len(), 1);
    let message = String::from_utf8(support::message_of(&files[0])).unwrap();
    assert!(message.contains("Subject: from swaks\r\n") && message.contains("sent by swaks\r\n"), "{message}");
}

#[test]
fn python_smtplib_sends_mail_that_lands_in_the_spool() {
    let server = Server::start("");
    let script = r#"
import smtplib
s = smtplib.SMTP('127.0.0.1', PORT)
s.ehlo('py.test')
assert s.has_extn('pipelining') and s.has_extn('size')
r = s.sendmail('sender@remote.test', ['alice@example.test', 'postmaster@example.test'],
               'Subject: from smtplib\r\n\r\n.leading dot\r\nbye\r\n')
assert r == {}, r
try:
    s.sendmail('sender@remote.test', ['relaytest@remote.test'], 'x')
    raise SystemExit('relayed')
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients['relaytest@remote.test'][0] == 554
s.quit()
"#
    .replace("PORT", &server.addr.port().to_string());
    let out = Command::new("python3").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = server.queued();
    assert_eq!(files.len(), 1);
    assert!(support::body_of(&files[0]).ends_with(b"Subject: from smtplib\r\n\r\n.leading dot\r\nbye\r\n"));
    let envelope = std::fs::read_to_string(&files[0]).unwrap();
    assert!(envelope.contains("rcpt: <alice@example.test>\nrcpt: <postmaster@example.test>\n"));
}

#[test]
fn when_threads_cannot_be_created_clients_get_421_and_the_server_lives() {
    if support::skip_unless_root("start as root and drop to nobody") {
        return;
    }
    // RLIMIT_NPROC counts nobody's threads once the server has dropped to nobody.
    let dir = TempDir::new("nproc");
    let nobody = postern::sys::lookup_user("nobody").unwrap().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(nobody.uid), Some(nobody.gid)).unwrap();
    let config = base_config(dir.path()) + "user = nobody\nmax_connections = 100\nmax_per_ip = 100\n";
    let server = Server::start_wrapped(dir, &config, &["prlimit", "--nproc=8"]);
    let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(server.addr)).collect();
    let greetings: Vec<String> = clients.iter_mut().map(|c| code(&c.reply())).collect();
    let refused = greetings.iter().filter(|g| g.starts_with("421")).count();
    assert!(refused > 0 && refused < 20, "{greetings:?}");
    drop(clients);
    std::thread::sleep(Duration::from_millis(300));
    let mut c = Client::greeted(server.addr);
    assert_eq!(code(&c.cmd("NOOP")), "250 2.0.0");
    assert!(server.log_with("cannot start a session thread").contains("cannot start a session thread"));
}

#[test]
fn sigterm_tells_open_sessions_421_and_queues_nothing_half_sent() {
    let server = Server::start("");
    let mut idle = Client::greeted(server.addr);
    let mut sending = Client::greeted(server.addr);
    sending.cmd("EHLO x");
    sending.open_data("a@remote.test", &["alice@example.test"]);
    sending.send(b"Subject: half\r\n\r\nnot finished");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    Command::new("kill").arg("-TERM").arg(server.pid().to_string()).status().unwrap();
    assert_eq!(code(&idle.reply()), "421 4.3.2");
    assert_eq!(code(&sending.reply()), "421 4.3.2");
    assert!(idle.is_closed(Duration::from_secs(5)) && sending.is_closed(Duration::from_secs(5)));
    let mut server = server;
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(server.queued().is_empty());
    assert!(support::list(&server.spool().join("tmp")).is_empty());
    // The last line may still be on its way through the log reader.
    let waited = Instant::now();
    while !server.log().contains("stopped") && waited.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.log().contains("stopped"), "{}", server.log());
}

#[test]
fn the_shipped_systemd_units_verify() {
    require_tool("systemd-analyze");
    let dir = TempDir::new("units");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let sbin = support::smtpd_binary().parent().unwrap().display().to_string();
    let mut units = Vec::new();
    for unit in support::list(&source) {
        let text = std::fs::read_to_string(&unit).unwrap().replace("@SBINDIR@", &sbin);
        let target = dir.path().join(unit.file_name().unwrap());
        std::fs::write(&target, &text).unwrap();
        units.push(target);
    }
    let out = Command::new("systemd-analyze").arg("verify").arg("--man=no").args(&units).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    // An Accept=yes socket must cap connections, or a flood forks without bound.
    let inetd = read("postern-smtpd-inetd.socket");
    assert!(
        inetd.contains("Accept=yes") && inetd.contains("MaxConnections=") && inetd.contains("MaxConnectionsPerSource=")
    );
    // The daemon holds the right to bind port 25 and to become its user, nothing more; the
    // delivery run only the right to become users. Each writes the spool and homes alone.
    let service = read("postern-smtpd.service");
    let deliver = read("postern-deliver.service");
    for (text, caps) in [(&service, "CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID"), (&deliver, "CAP_SETUID CAP_SETGID")]
    {
        assert!(text.contains(&format!("CapabilityBoundingSet={caps}\n")), "{text}");
        for line in ["NoNewPrivileges=yes\n", "ProtectSystem=strict\n", "ReadWritePaths=/var/spool/postern -/home\n"] {
            assert!(text.contains(line), "{line}");
        }
        assert!(!text.contains("ProtectHome="), "home maildirs are written");
    }
    assert!(service.contains("ExecReload=/bin/kill -HUP $MAINPID\n"), "systemctl reload reaches the daemon");
    // Logs in the journal as facility mail, under the tags log summarisers look for.
    for (unit, tag) in [
        ("postern-smtpd.service", "postern/smtpd"),
        ("postern-smtpd-inetd@.service", "postern/smtpd"),
        ("postern-deliver.service", "postern/deliver"),
    ] {
        let text = read(unit);
        assert!(
            text.contains(&format!("SyslogIdentifier={tag}\n")) && text.contains("SyslogFacility=mail\n"),
            "{unit}"
        );
    }
}

#[test]
fn make_uninstall_takes_back_what_install_put_and_keeps_mail_and_configuration() {
    let dest = TempDir::new("uninstall");
    let root = env!("CARGO_MANIFEST_DIR");
    let make = |target: &str| {
        let out = Command::new("make")
            .args(["-C", root, target, "PREFIX=/usr"])
            .arg(format!("DESTDIR={}", dest.path().display()))
            .arg(format!("BUILD_DIR={}", support::smtpd_binary().parent().unwrap().display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    make("install-files");
    // Another MTA's sendmail is never taken away.
    std::fs::remove_file(dest.path().join("usr/bin/mailq")).unwrap();
    std::fs::write(dest.path().join("usr/bin/mailq"), "another MTA's\n").unwrap();
    let said = make("uninstall");
    assert!(said.contains("left /etc/postern and /var/spool/postern"), "{said}");
    let left: Vec<PathBuf> = walk(dest.path()).into_iter().filter(|p| p.is_file() || p.is_symlink()).collect();
    let left: Vec<String> = left.iter().map(|p| p.strip_prefix(dest.path()).unwrap().display().to_string()).collect();
    assert_eq!(left, ["etc/postern/postern.conf", "usr/bin/mailq"], "{left:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn the_man_pages_render_cleanly_and_name_every_key() {
    require_tool("man");
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("doc");
    let pages: Vec<PathBuf> = support::list(&doc)
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("8" | "5")))
        .collect();
    assert_eq!(pages.len(), 6, "{pages:?}");
    for page in &pages {
        let out = Command::new("man").args(["--warnings", "-l"]).arg(page).env("MANWIDTH", "80").output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("SEE ALSO"), "{}", page.display());
    }
    // Every key the daemon has (all that --show-config prints) and every key the example
    // configuration shows is described in postern.conf(5).
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("postern.conf.example")).unwrap();
    let shown = show_config(&["--builtin-config", "--show-config"]);
    let conf5 = std::fs::read_to_string(doc.join("postern.conf.5")).unwrap().replace("\\-", "-");
    let keys: Vec<&str> = example
        .lines()
        .chain(shown.lines())
        .filter_map(|l| l.trim_start_matches('#').split_once(" =").map(|(k, _)| k))
        .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(keys.len() > 120, "{keys:?}");
    for key in keys {
        assert!(conf5.contains(&format!(".BI \"{key} = \"")), "postern.conf.5 lacks {key}");
    }
}

/// postern-smtpd's standard output for `args`, which must succeed.
fn show_config(args: &[&str]) -> String {
    let out = Command::new(support::smtpd_binary()).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn show_config_prints_every_key_and_with_n_those_changed() {
    let dir = TempDir::new("showconf");
    let conf = dir.path().join("postern.conf");
    std::fs::write(
        &conf,
        "hostname = mx.example.test\nlisten = [::1]:2587 submission, 127.0.0.1:2525\nauth_users = /etc/postern/users\n\
         # a comment, and a key set to its default\nvrfy = off\nmessage_size_limit = 20M\nrelayhost = [192.0.2.1]:587\n",
    )
    .unwrap();
    let path = conf.display().to_string();
    let changed = show_config(&["-c", &path, "--show-config", "-n"]);
    assert_eq!(
        changed,
        format!(
            "# {path}\nauth_users = /etc/postern/users\nhostname = mx.example.test\n\
             listen = [::1]:2587 submission, 127.0.0.1:2525\nmessage_size_limit = 20971520\nrelayhost = [192.0.2.1]:587\n"
        )
    );
    // Every key, once, in order; the defaults with the file's values among them.
    let all = show_config(&["-c", &path, "--show-config"]);
    let keys: Vec<&str> = all.lines().skip(1).map(|l| l.split_once(" =").unwrap().0).collect();
    assert!(keys.len() > 80 && keys.is_sorted(), "{all}");
    for line in ["vrfy = off", "max_queue_lifetime = 5d", "aliases =", "local_domains = mx.example.test, localhost"] {
        assert!(all.lines().any(|l| l == line), "{line}: {all}");
    }
    // What it prints is a configuration that reads the same.
    let again = dir.path().join("shown.conf");
    std::fs::write(&again, &all).unwrap();
    let reread = show_config(&["-c", &again.display().to_string(), "--show-config"]);
    assert_eq!(reread.lines().skip(1).collect::<Vec<_>>(), all.lines().skip(1).collect::<Vec<_>>());
    // A file that does not load is said with its line, as the daemon would.
    std::fs::write(&conf, "vrfy = maybe\n").unwrap();
    let out = Command::new(support::smtpd_binary()).args(["-c", &path, "--show-config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{path}:1: vrfy: expected on or off")));
    assert!(out.stdout.is_empty());
}

#[test]
fn make_install_puts_everything_under_destdir() {
    let dest = TempDir::new("destdir");
    let root = env!("CARGO_MANIFEST_DIR");
    // The binaries are already built by the test run; install only copies.
    let out = Command::new("make")
        .args(["-C", root, "install-files", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", dest.path().display()))
        .arg(format!("BUILD_DIR={}", support::smtpd_binary().parent().unwrap().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let d = dest.path();
    // One program under three names, and sendmail apart.
    for program in ["postern", "postern-sendmail"] {
        assert!(d.join("usr/sbin").join(program).symlink_metadata().unwrap().is_file(), "{program}");
    }
    for name in ["postern-smtpd", "postern-deliver", "postern-queue"] {
        assert_eq!(std::fs::read_link(d.join("usr/sbin").join(name)).unwrap(), Path::new("postern"), "{name}");
    }
    for link in ["usr/sbin/sendmail", "usr/bin/mailq", "usr/bin/newaliases"] {
        assert_eq!(std::fs::read_link(d.join(link)).unwrap(), Path::new("/usr/sbin/postern-sendmail"), "{link}");
    }
    for page in [
        "man8/postern-smtpd.8",
        "man8/postern-deliver.8",
        "man8/postern-sendmail.8",
        "man8/postern-queue.8",
        "man5/postern.conf.5",
    ] {
        assert!(d.join("usr/share/man").join(page).is_file(), "{page}");
    }
    assert!(d.join("etc/postern/postern.conf").is_file());
    let spool = std::fs::metadata(d.join("var/spool/postern")).unwrap();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&spool.permissions()) & 0o777, 0o755);
    // Where there is no systemd, cron runs delivery: the line cron reads, and what it runs.
    let cron = std::fs::read_to_string(d.join("etc/cron.d/postern")).unwrap();
    let line = cron.lines().find(|l| !l.starts_with('#') && !l.trim().is_empty()).unwrap();
    let fields: Vec<&str> = line.splitn(7, ' ').collect();
    assert_eq!(fields[..6], ["*", "*", "*", "*", "*", "root"], "{line}");
    let command = fields[6];
    assert_eq!(command, "[ -d /run/systemd/system ] || /usr/sbin/postern-deliver -c /etc/postern/postern.conf");
    if !Path::new("/run/systemd/system").exists() {
        // The command as cron's shell runs it, with the installed program and a test
        // configuration in place of /usr and /etc: what waits is delivered, nothing printed.
        let (spool_dir, conf) = support::configured("cron-run", "");
        // As installed: `log` left to its default (syslog for a command).
        let text = std::fs::read_to_string(&conf).unwrap().replace("log = stderr\n", "");
        std::fs::write(&conf, text).unwrap();
        let now = support::now();
        support::inject(
            &spool_dir.path().join("spool"),
            "someone@remote.test",
            &["alice@example.test"],
            now,
            Default::default(),
            b"x\r\n",
        );
        let command = command
            .replace("/usr/sbin/", &format!("{}/usr/sbin/", d.display()))
            .replace("/etc/postern/postern.conf", &conf.display().to_string());
        let out = Command::new("/bin/sh").arg("-c").arg(&command).output().unwrap();
        assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
        assert_eq!(support::maildir(&spool_dir.path().join("maildirs/alice")).len(), 1);
    }
    let unit = std::fs::read_to_string(d.join("usr/lib/systemd/system/postern-smtpd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/sbin/postern-smtpd -c /etc/postern/postern.conf"), "{unit}");
    let installed = Command::new(d.join("usr/sbin/postern-smtpd"))
        .arg("-c")
        .arg(d.join("etc/postern/postern.conf"))
        .arg("--check")
        .output()
        .unwrap();
    // The installed file parses; what --check may still find is this machine's own state
    // (no user `postern` here, a host name without a dot, say), or the reminder to give root
    // an alias, never a line of the file.
    let said = String::from_utf8_lossy(&installed.stderr);
    let machine_only = said.lines().all(|l| {
        l.contains("user: no user `postern`")
            || l.contains(": spool ")
            || l.contains("not a fully qualified name")
            || l.contains("warning: mail to root")
            || l.contains("/etc/aliases")
    });
    assert!(installed.status.success() || machine_only, "{said}");
}

#[test]
fn sighup_reloads_the_configuration_and_aliases_and_keeps_them_when_broken() {
    let server = Server::start("");
    let conf = server.dir.path().join("postern.conf");
    let aliases = server.dir.path().join("aliases");
    let rcpt = |to: &str| {
        let mut c = Client::greeted(server.addr);
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<someone@remote.test>");
        code(&c.cmd(&format!("RCPT TO:<{to}>")))
    };
    assert_eq!(rcpt("sales@example.test"), "550 5.1.1");
    let hup = || {
        Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    };
    let text = std::fs::read_to_string(&aliases).unwrap();
    std::fs::write(&aliases, text + "sales: alice\n").unwrap();
    let config = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        config.replace("local_domains = example.test\n", "local_domains = example.test, example.net\n"),
    )
    .unwrap();
    hup();
    assert_eq!(rcpt("sales@example.test"), "250 2.1.5", "{}", server.log());
    assert_eq!(rcpt("alice@example.net"), "250 2.1.5", "{}", server.log());
    assert!(server.log().contains("reloaded "), "{}", server.log());
    // A broken file is logged, and what is in use stays.
    std::fs::write(&conf, "no_such_key = 1\n").unwrap();
    hup();
    assert!(server.log().contains("reload failed, the configuration in use is kept"), "{}", server.log());
    assert_eq!(rcpt("sales@example.test"), "250 2.1.5");
    assert_eq!(rcpt("alice@example.net"), "250 2.1.5");
    let mut server = server;
    assert!(server.child.try_wait().unwrap().is_none(), "SIGHUP never stops the daemon");
}

/// A session keeps the configuration it began with: a reload between its greeting and its
/// DATA does not change the name it wrote into `Received:`; the next session has the new one.
#[test]
fn a_session_keeps_the_configuration_it_began_with_across_a_reload() {
    let server = Server::start("");
    let conf = server.dir.path().join("postern.conf");
    let mut old = Client::connect(server.addr);
    assert!(old.reply().contains("mail.example.test"));
    assert!(old.cmd("EHLO client.test").starts_with("250"));
    let config = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, config.replace("hostname = mail.example.test\n", "hostname = mx2.example.test\n")).unwrap();
    Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server.log().contains("reloaded ") {
        assert!(std::time::Instant::now() < deadline, "no reload: {}", server.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut new = Client::connect(server.addr);
    assert!(new.reply().contains("mx2.example.test"), "the next session greets with the new name");
    assert!(new.cmd("EHLO client.test").starts_with("250"));
    assert!(old.mail("someone@remote.test", &["alice@example.test"], b"Subject: old\r\n\r\nx").starts_with("250"));
    assert!(new.mail("someone@remote.test", &["alice@example.test"], b"Subject: new\r\n\r\nx").starts_with("250"));
    let texts: Vec<String> =
        server.queued().iter().map(|f| String::from_utf8_lossy(&support::message_of(f)).into_owned()).collect();
    assert_eq!(texts.len(), 2);
    for (subject, host) in [("Subject: old", "mail.example.test"), ("Subject: new", "mx2.example.test")] {
        let text = texts.iter().find(|t| t.contains(subject)).expect(subject);
        assert!(text.lines().any(|l| l.starts_with("Received: from client.test")), "{text}");
        assert!(text.contains(&format!("by {host} ")), "{subject}: {text}");
        let other = if host == "mail.example.test" { "mx2.example.test" } else { "mail.example.test" };
        assert!(!text.contains(other), "{subject} names one host only: {text}");
    }
}

#[test]
fn make_deb_builds_a_package_that_is_the_boxs_mta() {
    if support::skip_unless(support::have("dpkg-deb"), "dpkg-deb is not installed") {
        return;
    }
    let dir = TempDir::new("deb");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("make")
        .args(["-C", root, "deb-files"])
        .arg(format!("BUILD_DIR={}", support::smtpd_binary().parent().unwrap().display()))
        .arg(format!("DEB_ROOT={}", dir.path().join("root").display()))
        .arg(format!("DEB_OUT={}", dir.path().display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let deb =
        support::list(dir.path()).into_iter().find(|p| p.extension().is_some_and(|e| e == "deb")).expect("a .deb");
    let field = |name: &str| {
        let out = Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // `apt install bsd-mailx` is satisfied by it instead of pulling in another MTA.
    assert_eq!(field("Package"), "postern");
    for name in ["Provides", "Conflicts", "Replaces"] {
        assert_eq!(field(name), "mail-transport-agent", "{name}");
    }
    let listing = Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    for entry in [
        "./usr/sbin/sendmail -> postern-sendmail",
        "./usr/bin/mailq -> ../sbin/postern-sendmail",
        "./usr/sbin/postern-queue -> postern",
        "./usr/sbin/postern-sendmail",
        "./usr/share/man/man8/postern-sendmail.8.gz",
        "./usr/share/man/man1/mailq.1.gz -> ../man8/postern-sendmail.8.gz",
        "./usr/share/doc/postern/copyright",
        "./usr/share/doc/postern/changelog.gz",
        "./usr/lib/systemd/system/postern-deliver.timer",
        "./etc/postern/postern.conf",
        "./etc/cron.d/postern",
    ] {
        assert!(listing.contains(entry), "{entry} in\n{listing}");
    }
    let conffiles = Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&conffiles.stdout), "/etc/postern/postern.conf\n/etc/cron.d/postern\n");
    let control = Command::new("dpkg-deb").arg("--info").arg(&deb).output().unwrap();
    let control = String::from_utf8_lossy(&control.stdout).to_string();
    for part in ["postinst", "prerm", "postrm", "conffiles", "md5sums"] {
        assert!(control.contains(part), "{part}: {control}");
    }
    the_package_lives_and_goes_in_a_throwaway_root(&deb, dir.path());
    // Debian's own check of a package: no error and no warning.
    if support::skip_unless(support::have("lintian"), "lintian is not installed") {
        return;
    }
    let out = Command::new("lintian").arg(&deb).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let found: Vec<&str> = said.lines().filter(|l| l.starts_with("E: ") || l.starts_with("W: ")).collect();
    assert!(found.is_empty() && out.status.success(), "{said}");
}

/// The package installed, upgraded, removed and purged in a root of its own (the host's seen
/// through an overlay in a mount namespace of the script's: tests/deb-lifecycle.sh). What a
/// Debian administrator expects: the user, the group and the spool made; postern-sendmail
/// setgid through dpkg-statoverride; the units enabled and started on install, restarted on
/// upgrade, a unit the administrator disabled left so, stopped on remove; and a purge that
/// takes away what the package made, except a spool that still holds mail.
fn the_package_lives_and_goes_in_a_throwaway_root(deb: &Path, dir: &Path) {
    if support::skip_unless_root("mount an overlay root in a namespace of its own") {
        return;
    }
    let scratch = dir.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/deb-lifecycle.sh");
    let out = Command::new(&script).arg(deb).arg(&scratch).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if support::skip_unless(out.status.code() != Some(77), said.trim()) {
        return;
    }
    assert!(out.status.success() && said.ends_with("done\n"), "{said}");
    let spool = "/var/spool/postern";
    for line in [
        "installed: user: postern:/var/spool/postern",
        "installed: groups: postern postern-drop ",
        "installed: override: root postern-drop 2755 /usr/sbin/postern-sendmail",
        "installed: sendmail: 2755 root postern-drop",
        "installed: maildrop: 1730 postern postern-drop",
        "installed: enabled: postern-smtpd.service",
        "installed: enabled: postern-deliver.timer",
        "installed: called: deb-systemd-invoke start postern-smtpd.service postern-deliver.timer",
        "upgraded: override: root postern-drop 2755 /usr/sbin/postern-sendmail",
        "upgraded: sendmail: 2755 root postern-drop",
        "upgraded: enabled: postern-smtpd.service",
        "upgraded: called: deb-systemd-invoke restart postern-smtpd.service postern-deliver.timer",
        "removed: called: deb-systemd-invoke stop postern-smtpd.service postern-smtpd.socket postern-deliver.timer postern-deliver.service",
        "removed: sendmail: none",
        "removed: user: postern:/var/spool/postern",
        "removed: /etc/postern: postern.conf ",
        "purged-with-mail: said: postern: /var/spool/postern holds 1 queued file(s): left, with the user postern and the group postern-drop that own them",
        "purged-with-mail: user: postern:/var/spool/postern",
        "purged-with-mail: override: ",
        "purged-with-mail: /etc/postern: none",
        "purged: user: ",
        "purged: groups: ",
        "purged: override: ",
        &format!("purged: {spool}: none"),
        "purged: /etc/postern: none",
    ] {
        assert!(said.lines().any(|l| l == line), "{line}\n{said}");
    }
    assert!(!said.contains("upgraded: enabled: postern-deliver.timer"), "the timer stays disabled: {said}");
    assert!(!said.contains("purged: enabled:"), "{said}");
    assert!(
        said.contains("installed: /var/spool/postern: corrupt cur hold maildrop new spare srs-secret tmp"),
        "{said}"
    );
    // The host is as it was: no postern package, its own deb-systemd-invoke, nothing left.
    let installed = Command::new("dpkg-query").args(["-W", "postern"]).output().unwrap();
    assert!(!installed.status.success(), "{installed:?}");
    let invoke = std::fs::read_to_string("/usr/bin/deb-systemd-invoke").unwrap_or_default();
    assert!(!invoke.contains("/tmp/calls"), "the host's deb-systemd-invoke was replaced");
    assert!(support::list(&scratch).is_empty(), "the overlay's files went with its namespace");
}

/// Mail arrives while the configuration file is replaced by a broken one, an empty one, one
/// that moves the spool, and a good one again, each followed by SIGHUP: every message is
/// accepted, every local recipient kept, and every message delivered.
#[test]
fn a_loaded_reload_of_broken_empty_and_good_files_loses_nothing() {
    let dir = TempDir::new("hup-under-load");
    let config = support::instant(&support::config_with(dir.path(), ""));
    let server = Server::start_in(dir, &config);
    let conf = server.dir.path().join("postern.conf");
    const MESSAGES: usize = 120;
    let addr = server.addr;
    let sender = std::thread::spawn(move || {
        let mut replies = Vec::new();
        let mut c = Client::greeted(addr);
        c.cmd("EHLO client.test");
        for i in 0..MESSAGES {
            c.open_data("someone@remote.test", &["alice@example.test"]);
            replies.push(c.mail_text(format!("Subject: load {i}\r\n\r\nbody\r\n").as_bytes()));
            std::thread::sleep(Duration::from_millis(5));
        }
        c.cmd("QUIT");
        replies
    });
    let hup = |text: &str| {
        std::fs::write(&conf, text).unwrap();
        Command::new("kill").arg("-HUP").arg(server.pid().to_string()).status().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    };
    let moved = config.replace("/spool\n", "/elsewhere\n");
    for text in ["no_such_key = 1\n", "", "# only a comment\n", moved.as_str(), config.as_str()] {
        hup(text);
    }
    let replies = sender.join().unwrap();
    assert!(
        replies.iter().all(|r| r.starts_with("250 ")),
        "{:?}\n{}",
        replies.iter().find(|r| !r.starts_with("250 ")),
        server.log()
    );
    let log = server.log();
    assert_eq!(log.matches("reload failed, the configuration in use is kept").count(), 3, "{log}");
    assert!(log.contains("sets nothing"), "{log}");
    assert!(
        log.contains("reload refused, the configuration in use is kept: spool changed, which takes a restart"),
        "{log}"
    );
    // Whatever instant delivery could not deliver under a broken file is delivered once the
    // good one is in.
    let alice = server.dir.path().join("maildirs/alice");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while support::maildir(&alice).len() < MESSAGES && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut subjects: Vec<String> = support::maildir(&alice)
        .iter()
        .filter_map(|m| m.lines().find(|l| l.starts_with("Subject: ")).map(str::to_string))
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), MESSAGES, "{}", server.log());
    assert!(!server.dir.path().join("elsewhere").exists(), "the spool did not move");
}
