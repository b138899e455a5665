//! A load client for `make bench` that costs little next to the server it measures: a thread
//! per session, each sending one message per connection (EHLO, optionally STARTTLS and EHLO
//! again, MAIL, RCPT, DATA, QUIT), until COUNT messages have been sent.
//!
//! usage: smtp_load PORT SESSIONS COUNT [plain | starttls | resume]
//!
//! `starttls` makes a full handshake on every connection; `resume` offers each session's last
//! TLS session (a ticket) on its next connection, as a returning client does. Certificates are
//! not checked. Prints `MESSAGES SECONDS RESUMED`: messages accepted with 250, the time they
//! took, and how many handshakes the server resumed.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openssl::ssl::{SslConnector, SslMethod, SslSession, SslVerifyMode};

#[derive(Clone, Copy, PartialEq)]
enum Tls {
    Plain,
    Full,
    Resume,
}

/// Reads one whole reply (RFC 5321 §4.2.1: lines `ddd-` until a line `ddd `) and returns its code.
fn reply(stream: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-reply"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !buf.ends_with(b"\r\n") {
            continue;
        }
        let last = buf[..buf.len() - 2].rsplit(|&b| b == b'\n').next().unwrap_or_default();
        if last.len() >= 4 && last[3] == b' ' {
            let code = std::str::from_utf8(&last[..3]).ok().and_then(|c| c.parse().ok());
            return code.ok_or_else(|| io::Error::other(format!("not a reply: {:?}", String::from_utf8_lossy(buf))));
        }
    }
}

/// Sends `line` and reads the reply, which must have code `want`.
fn command(stream: &mut (impl Read + Write), buf: &mut Vec<u8>, line: &[u8], want: u16) -> io::Result<()> {
    stream.write_all(line)?;
    let code = reply(stream, buf)?;
    if code != want {
        let said = String::from_utf8_lossy(buf);
        return Err(io::Error::other(format!("{} answered {said}", String::from_utf8_lossy(line).trim_end())));
    }
    Ok(())
}

/// The transaction after EHLO, then QUIT.
fn transaction(stream: &mut (impl Read + Write), buf: &mut Vec<u8>, body: &[u8]) -> io::Result<()> {
    command(stream, buf, b"MAIL FROM:<sender@bench.test>\r\n", 250)?;
    command(stream, buf, b"RCPT TO:<rcpt@remote.test>\r\n", 250)?;
    command(stream, buf, b"DATA\r\n", 354)?;
    command(stream, buf, body, 250)?;
    command(stream, buf, b"QUIT\r\n", 221)
}

/// One connection, one message; `session` is offered when resuming and replaced by the new one.
/// Returns whether the server resumed the TLS session.
fn one(
    port: u16,
    tls: Tls,
    connector: &SslConnector,
    session: &mut Option<SslSession>,
    body: &[u8],
) -> io::Result<bool> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    tcp.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    if reply(&mut tcp, &mut buf)? != 220 {
        return Err(io::Error::other("no greeting"));
    }
    command(&mut tcp, &mut buf, b"EHLO load.bench.test\r\n", 250)?;
    if tls == Tls::Plain {
        transaction(&mut tcp, &mut buf, body)?;
        return Ok(false);
    }
    command(&mut tcp, &mut buf, b"STARTTLS\r\n", 220)?;
    let mut config = connector.configure().map_err(io::Error::other)?;
    config.set_verify_hostname(false);
    let mut ssl = config.into_ssl("bench.test").map_err(io::Error::other)?;
    if let (Tls::Resume, Some(old)) = (tls, session.as_ref()) {
        // SAFETY: the session was made by a connection of this same connector, so of the same
        // SSL_CTX, which is what SSL_set_session requires.
        unsafe { ssl.set_session(old) }.map_err(io::Error::other)?;
    }
    let mut stream = openssl::ssl::SslStream::new(ssl, tcp).map_err(io::Error::other)?;
    stream.connect().map_err(io::Error::other)?;
    command(&mut stream, &mut buf, b"EHLO load.bench.test\r\n", 250)?;
    transaction(&mut stream, &mut buf, body)?;
    let resumed = stream.ssl().session_reused();
    // Closed cleanly (close_notify), or OpenSSL takes the session as not to be resumed.
    let _ = stream.shutdown();
    // After a reply or two the TLS 1.3 tickets the server sent have been read.
    if tls == Tls::Resume {
        *session = stream.ssl().session().map(|s| s.to_owned());
    }
    Ok(resumed)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (port, sessions, count, tls) = match args.as_slice() {
        [_, port, sessions, count, rest @ ..] if rest.len() <= 1 => {
            let tls = match rest.first().map(String::as_str) {
                None | Some("plain") => Tls::Plain,
                Some("starttls") => Tls::Full,
                Some("resume") => Tls::Resume,
                Some(other) => usage(other),
            };
            (
                port.parse().unwrap_or_else(|_| usage(port)),
                sessions.parse().unwrap_or_else(|_| usage(sessions)),
                count.parse().unwrap_or_else(|_| usage(count)),
                tls,
            )
        }
        _ => usage("too few or too many arguments"),
    };
    let mut builder = SslConnector::builder(SslMethod::tls_client()).expect("TLS client context");
    builder.set_verify(SslVerifyMode::NONE);
    let connector = builder.build();
    // 4 KiB in lines of 78 octets, as mail is written.
    let mut body = b"Subject: load\r\n\r\n".to_vec();
    while body.len() < 4096 {
        body.extend_from_slice(&[b'x'; 76]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let left = AtomicUsize::new(count);
    let resumed = AtomicUsize::new(0);
    let started = Instant::now();
    let sent: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..sessions)
            .map(|_| {
                let (connector, body, left, resumed) = (&connector, &body, &left, &resumed);
                scope.spawn(move || {
                    let mut session = None;
                    let mut sent = 0;
                    while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
                        match one(port, tls, connector, &mut session, body) {
                            Ok(again) => {
                                sent += 1;
                                resumed.fetch_add(usize::from(again), Ordering::Relaxed);
                            }
                            Err(e) => {
                                eprintln!("smtp_load: {e}");
                                std::process::exit(1);
                            }
                        }
                    }
                    sent
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
    });
    let seconds = started.elapsed().as_secs_f64();
    println!("{sent} {seconds:.3} {}", resumed.load(Ordering::Relaxed));
}

fn usage(what: &str) -> ! {
    eprintln!("smtp_load: {what}\nusage: smtp_load PORT SESSIONS COUNT [plain | starttls | resume]");
    std::process::exit(2);
}
