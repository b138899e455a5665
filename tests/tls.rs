//! STARTTLS (RFC 3207) over real sockets: plaintext injection, state reset, stalled handshakes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use native_tls::{TlsConnector, TlsStream};
use support::{Client, Server, code};

fn tls_server(extra: &str) -> Server {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    Server::start(&format!(
        "tls_cert = {}\ntls_key = {}\n{extra}",
        data.join("tls-cert.pem").display(),
        data.join("tls-key.pem").display()
    ))
}

/// A client that can switch to TLS mid-session.
struct TlsClient {
    reader: BufReader<TlsStream<TcpStream>>,
}

impl TlsClient {
    fn upgrade(client: Client) -> TlsClient {
        let connector = TlsConnector::builder().danger_accept_invalid_certs(true).build().unwrap();
        let tls = connector.connect("mail.example.test", client.stream).expect("TLS handshake");
        TlsClient { reader: BufReader::new(tls) }
    }

    fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return lines.join("\n");
            }
            let line = line.trim_end().to_string();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.reader.get_mut().write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.reply()
    }
}

#[test]
fn starttls_is_offered_once_and_mail_flows_under_tls() {
    let server = tls_server("");
    let mut c = Client::greeted(server.addr);
    assert!(c.cmd("EHLO x").lines().any(|l| l == "250-STARTTLS" || l == "250 STARTTLS"));
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    let mut t = TlsClient::upgrade(c);
    // The state is back to just after the greeting.
    assert_eq!(code(&t.cmd("MAIL FROM:<a@remote.test>")), "503 5.5.1");
    // No STARTTLS in the EHLO reply under TLS.
    let ehlo = t.cmd("EHLO x");
    assert!(ehlo.starts_with("250-") && !ehlo.contains("STARTTLS"), "{ehlo}");
    // STARTTLS again.
    assert_eq!(code(&t.cmd("STARTTLS")), "554 5.5.1");
    // Relay row 40: TLS is not authorisation.
    assert_eq!(code(&t.cmd("MAIL FROM:<a@remote.test>")), "250 2.1.0");
    assert_eq!(code(&t.cmd("RCPT TO:<relaytest@remote.test>")), "554 5.7.1");
    assert_eq!(code(&t.cmd("RCPT TO:<alice@example.test>")), "250 2.1.5");
    assert_eq!(code(&t.cmd("DATA")), "354");
    assert_eq!(code(&t.cmd("Subject: tls\r\n\r\nsecret\r\n.")), "250 2.0.0");
    assert_eq!(code(&t.cmd("QUIT")), "221 2.0.0");
    let message = String::from_utf8(support::message_of(&server.queued()[0])).unwrap();
    assert!(message.contains(" with ESMTPS id "), "{message}");
}

#[test]
fn plaintext_sent_with_starttls_is_discarded() {
    let server = tls_server("");
    // STARTTLS and RSET in one write. The RSET must never be answered.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.send(b"STARTTLS\r\nRSET\r\n");
    assert_eq!(code(&c.reply()), "220 2.0.0");
    let mut t = TlsClient::upgrade(c);
    let first = t.cmd("EHLO x");
    assert!(first.starts_with("250-mail.example.test"), "the first TLS reply was `{first}`");
    // An injected MAIL does not count.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    c.send(b"STARTTLS\r\nMAIL FROM:<a@remote.test>\r\n");
    assert_eq!(code(&c.reply()), "220 2.0.0");
    let mut t = TlsClient::upgrade(c);
    t.cmd("EHLO x");
    assert_eq!(code(&t.cmd("RCPT TO:<alice@example.test>")), "503 5.5.1");
}

#[test]
fn starttls_arguments_and_absence() {
    let server = tls_server("");
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS foo")), "501 5.5.4");
    let plain = Server::start("");
    let mut c = Client::greeted(plain.addr);
    assert!(!c.cmd("EHLO x").contains("STARTTLS"));
    assert_eq!(code(&c.cmd("STARTTLS")), "502 5.5.1");
}

#[test]
fn a_broken_or_stalled_handshake_ends_the_session() {
    let server = tls_server("starttls_timeout = 1s\n");
    // Garbage instead of a ClientHello.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    c.send(b"this is not TLS at all\r\n\r\n");
    assert!(c.is_closed(Duration::from_secs(5)));
    // DS10: half a ClientHello, then silence: closed at the starttls timeout.
    let mut c = Client::greeted(server.addr);
    c.cmd("EHLO x");
    assert_eq!(code(&c.cmd("STARTTLS")), "220 2.0.0");
    c.send(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]);
    let started = Instant::now();
    assert!(c.is_closed(Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(800));
    // The server goes on.
    let mut ok = Client::greeted(server.addr);
    assert_eq!(code(&ok.cmd("NOOP")), "250 2.0.0");
}
