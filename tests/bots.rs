//! Bots turned away before their first command, as a stranger's client on port 25 meets it.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{Client, Server, TempDir, code, config_with};

#[test]
fn a_client_that_talks_before_the_greeting_is_turned_away() {
    let server = Server::start("greet_pause = 1s\n");
    // A bot: EHLO at once, without waiting for the 220.
    let mut bot = std::net::TcpStream::connect(server.addr).unwrap();
    bot.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bot.write_all(b"EHLO bot.example\r\n").unwrap();
    let mut heard = Vec::new();
    bot.read_to_end(&mut heard).unwrap();
    assert_eq!(String::from_utf8_lossy(&heard), "521 5.5.1 Protocol error\r\n");
    let log = server.log_with("PREGREET");
    let line = log.lines().find(|l| l.contains("PREGREET")).unwrap_or_default();
    assert!(line.contains("PREGREET 18 after "), "{log}");
    assert!(line.ends_with(" from unknown[127.0.0.1]: EHLO bot.example\\r\\n"), "{log}");
    // Nothing of it was run: no session, no milter, no queue.
    assert!(server.queued().is_empty());

    // A client that waits gets the greeting after the pause, and is served as ever.
    let started = Instant::now();
    let mut c = Client::greeted(server.addr);
    assert!(started.elapsed() >= Duration::from_millis(950), "{:?}", started.elapsed());
    assert!(c.cmd("EHLO client.remote.test").starts_with("250"));
    c.open_data("bob@remote.test", &["alice@example.test"]);
    assert_eq!(code(&c.mail_text(b"Subject: hi\r\n\r\npatient\r\n")), "250 2.0.0");
    assert_eq!(server.queued().len(), 1);
}

#[test]
fn trusted_clients_are_not_made_to_wait() {
    let dir = TempDir::new("pregreet-trusted");
    let config = config_with(dir.path(), "greet_pause = 2s\ntrusted_networks = 127.0.0.0/8\n");
    let server = Server::start_in(dir, &config);
    let started = Instant::now();
    let mut c = Client::greeted(server.addr);
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    // A trusted client that pipelines its EHLO is served.
    c.send(b"EHLO x\r\n");
    assert!(c.reply().starts_with("250"));
}

#[test]
fn connections_past_the_rate_are_refused_with_421() {
    let server = Server::start("max_connection_rate = 3\n");
    let mut open: Vec<Client> = (0..3).map(|_| Client::greeted(server.addr)).collect();
    let mut fourth = Client::connect(server.addr);
    assert_eq!(fourth.reply(), "421 4.7.0 mail.example.test Error: too many connections from 127.0.0.1");
    assert!(fourth.is_closed(Duration::from_secs(5)));
    let log = server.log_with("Connection rate limit exceeded");
    assert!(log.contains("Connection rate limit exceeded: 4 from [127.0.0.1] within a minute"), "{log}");
    // Those let in are served; closing them does not give the rate back.
    assert!(open[0].cmd("EHLO client.remote.test").starts_with("250"));
    open.clear();
    assert!(Client::connect(server.addr).reply().starts_with("421 4.7.0"));
}

#[test]
fn mail_past_the_rate_is_deferred_with_450_and_trusted_clients_are_not_counted() {
    let server = Server::start("max_message_rate = 2\n");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.remote.test");
    for _ in 0..2 {
        assert!(c.cmd("MAIL FROM:<bob@remote.test>").starts_with("250"));
        assert!(c.cmd("RSET").starts_with("250"));
    }
    assert_eq!(c.cmd("MAIL FROM:<bob@remote.test>"), "450 4.7.1 Error: too much mail from 127.0.0.1");
    // Counted per address, across connections.
    let mut again = Client::greeted(server.addr);
    again.cmd("EHLO client.remote.test");
    assert_eq!(code(&again.cmd("MAIL FROM:<bob@remote.test>")), "450 4.7.1");
    let log = server.log_with("NOQUEUE: reject: MAIL");
    assert!(
        log.contains("NOQUEUE: reject: MAIL from unknown[127.0.0.1]: 450 4.7.1 Error: too much mail from 127.0.0.1;"),
        "{log}"
    );

    let dir = TempDir::new("rate-trusted");
    let config =
        config_with(dir.path(), "max_message_rate = 2\nmax_connection_rate = 2\ntrusted_networks = 127.0.0.0/8\n");
    let trusted = Server::start_in(dir, &config);
    for _ in 0..4 {
        let mut c = Client::greeted(trusted.addr);
        c.cmd("EHLO x");
        assert!(c.cmd("MAIL FROM:<bob@remote.test>").starts_with("250"));
    }
}

/// Block and allow lists on a DNS server the test starts; the client is 127.0.0.1, asked as
/// `1.0.0.127.ZONE`.
fn lists() -> support::dns::FakeDns {
    use hickory_proto::rr::RecordType::A;
    use support::dns::Answer::{Ip, Silence};
    support::dns::FakeDns::start(&[
        ("1.0.0.127.black.test", A, Ip(vec!["127.0.0.2"])),
        ("1.0.0.127.grey.test", A, Ip(vec!["127.0.0.4", "127.0.0.10"])),
        ("1.0.0.127.white.test", A, Ip(vec!["127.0.10.1"])),
        ("1.0.0.127.public.test", A, Ip(vec!["127.255.255.254"])),
        ("1.0.0.127.slow.test", A, Silence),
    ])
}

fn with_lists(dns: &support::dns::FakeDns, lists: &str) -> Server {
    let dir = TempDir::new("dnsbl");
    let extra = format!("dns_servers = {}\ndnsbl = {lists}\ndnsbl_timeout = 1s\nreverse_dns = off\n", dns.addr);
    let config = config_with(dir.path(), &extra);
    Server::start_in(dir, &config)
}

/// The reply to the first RCPT of a session.
fn first_rcpt(server: &Server) -> String {
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.remote.test");
    assert!(c.cmd("MAIL FROM:<bob@remote.test>").starts_with("250"));
    c.cmd("RCPT TO:<alice@example.test>")
}

#[test]
fn a_listed_client_is_refused_at_rcpt_naming_the_lists() {
    let dns = lists();
    let server = with_lists(&dns, "black.test*2, grey.test, nothing.test");
    assert_eq!(
        first_rcpt(&server),
        "554 5.7.1 Service unavailable; client [127.0.0.1] blocked using black.test, grey.test"
    );
    let log = server.log_with("NOQUEUE: reject: RCPT");
    assert!(log.contains("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 554 5.7.1 Service unavailable;"), "{log}");
    assert!(log.contains("dnsbl score 3 (black.test, grey.test)"), "{log}");
    let asked = dns.queried();
    for name in ["1.0.0.127.black.test. A", "1.0.0.127.grey.test. A", "1.0.0.127.nothing.test. A"] {
        assert!(asked.iter().any(|q| q == name), "{asked:?}");
    }
    assert!(server.queued().is_empty());
}

#[test]
fn allow_lists_error_codes_silence_and_the_threshold() {
    let dns = lists();
    // An allow list outweighs a listing.
    let server = with_lists(&dns, "black.test, white.test*-5");
    assert!(first_rcpt(&server).starts_with("250"));
    // 127.255.255.x is the list's error code, not a listing; said once, with the advice.
    let server = with_lists(&dns, "public.test");
    assert!(first_rcpt(&server).starts_with("250"));
    let log = server.log_with("an error code");
    assert!(log.contains("public.test answered 127.255.255.254") && log.contains("dns_servers"), "{log}");
    // A list that does not answer lists nothing, and costs at most dnsbl_timeout.
    let server = with_lists(&dns, "slow.test");
    let started = Instant::now();
    let mut c = Client::greeted(server.addr);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    c.cmd("EHLO client.remote.test");
    assert!(c.cmd("MAIL FROM:<bob@remote.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    // Under the threshold: listed, and let through.
    let dir = TempDir::new("dnsbl-threshold");
    let extra = format!("dns_servers = {}\ndnsbl = grey.test\ndnsbl_threshold = 2\n", dns.addr);
    let config = config_with(dir.path(), &extra);
    let server = Server::start_in(dir, &config);
    assert!(first_rcpt(&server).starts_with("250"));
}

#[test]
fn trusted_clients_are_not_looked_up_and_test_sender_shows_the_score() {
    let dns = lists();
    let dir = TempDir::new("dnsbl-trusted");
    let extra = format!("dns_servers = {}\ndnsbl = black.test\ntrusted_networks = 127.0.0.0/8\n", dns.addr);
    let config = config_with(dir.path(), &extra);
    let conf = dir.path().join("postern.conf");
    let server = Server::start_in(dir, &config);
    assert!(first_rcpt(&server).starts_with("250"));
    assert!(!dns.queried().iter().any(|q| q.contains("black.test")), "{:?}", dns.queried());
    let out = std::process::Command::new(support::smtpd_binary())
        .arg("-c")
        .arg(&conf)
        .args(["--test-sender", "127.0.0.1", "client.remote.test", "bob@remote.test"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("dnsbl: score 1 of threshold 1: black.test listed (+1)"), "{said}");
    assert!(
        said.contains("verdict: reject 554 5.7.1 Service unavailable; client [127.0.0.1] blocked using black.test"),
        "{said}"
    );
}

/// The reply to RCPT TO:<alice@example.test> from `from`.
fn rcpt_from(server: &Server, from: &str) -> String {
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO client.remote.test");
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    c.cmd("RCPT TO:<alice@example.test>")
}

#[test]
fn greylisting_defers_a_first_attempt_and_remembers_across_a_kill() {
    let dir = TempDir::new("greylist");
    let config = config_with(dir.path(), "greylist = on\ngreylist_delay = 1s\n");
    let server = Server::start_in(dir, &config);
    assert_eq!(rcpt_from(&server, "bob@remote.test"), "451 4.7.1 Greylisted: try again later");
    // Too soon: deferred again.
    assert_eq!(code(&rcpt_from(&server, "bob@remote.test")), "451 4.7.1");
    std::thread::sleep(Duration::from_millis(1100));
    assert!(rcpt_from(&server, "bob@remote.test").starts_with("250"));
    let log = server.log_with("Greylisted");
    assert!(
        log.contains("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 451 4.7.1 Greylisted: try again later;"),
        "{log}"
    );
    // Killed and started again: the triple is remembered, a new one is not.
    let dir = server.kill9();
    let file = std::fs::read_to_string(dir.path().join("spool/greylist")).unwrap();
    assert!(file.contains(" pass 127.0.0.0/24 <bob@remote.test> <alice@example.test>\n"), "{file}");
    let server = Server::start_in(dir, &config);
    assert!(rcpt_from(&server, "bob@remote.test").starts_with("250"));
    assert_eq!(code(&rcpt_from(&server, "carol@remote.test")), "451 4.7.1");
}

#[test]
fn trusted_clients_are_not_greylisted() {
    let dir = TempDir::new("greylist-trusted");
    let config = config_with(dir.path(), "greylist = on\ntrusted_networks = 127.0.0.0/8\n");
    let server = Server::start_in(dir, &config);
    assert!(rcpt_from(&server, "bob@remote.test").starts_with("250"));
    assert!(
        !server.spool().join("greylist").exists()
            || std::fs::read_to_string(server.spool().join("greylist")).unwrap().is_empty()
    );
}

#[test]
fn submission_ports_are_not_looked_up() {
    let dns = lists();
    let dir = TempDir::new("dnsbl-submission");
    let users = dir.path().join("users");
    std::fs::write(&users, support::hash_line("alice", "a password", "sha512")).unwrap();
    std::fs::set_permissions(&users, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let extra = format!("dns_servers = {}\ndnsbl = black.test\nauth_users = {}\n", dns.addr, users.display());
    let config = config_with(dir.path(), &extra).replace("listen = 127.0.0.1:0\n", "listen = 127.0.0.1:0 submission\n");
    let server = Server::start_in(dir, &config);
    let mut c = Client::greeted(server.addr);
    assert!(c.cmd("EHLO laptop").starts_with("250"));
    assert!(!dns.queried().iter().any(|q| q.contains("black.test")), "{:?}", dns.queried());
}
