//! Bots turned away before their first command, as a stranger's client on port 25 meets it.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use support::{Client, Server, TempDir, code, config_with};

fn logged(server: &Server, text: &str) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log();
        if log.contains(text) || Instant::now() > until {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    let log = logged(&server, "PREGREET");
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
