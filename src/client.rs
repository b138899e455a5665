//! The SMTP client (RFC 5321 §4, RFC 2920, RFC 3207, RFC 4954) over TCP, with TLS when offered.
//!
//! ```text
//! connect -> greeting 220 -> EHLO (HELO if refused) -> [STARTTLS -> 220 -> TLS -> EHLO]
//!         -> [AUTH] -> { [RSET] MAIL, RCPT..., DATA, text, "." } per message -> QUIT
//! ```
//! Replies are read with bounded lines and a bounded line count (a hostile server cannot grow memory); every wait has
//! its own deadline (§4.5.3.2). Outcomes are per recipient: a 250 to RCPT and a 250 after the
//! dot means sent; any 4xx defers, any 5xx bounces, only the recipients it concerns.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use native_tls::{TlsConnector, TlsStream};

/// A reply line longer than this, or more lines than MAX_LINES, is a protocol error.
const MAX_LINE: usize = 2048;
const MAX_LINES: usize = 100;

/// One reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    /// Every line's text after the code, joined by spaces.
    pub text: String,
    /// The text of each line, for EHLO keywords.
    pub lines: Vec<String>,
}

impl ServerReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status code the reply carries, else one made from its class.
    pub fn status(&self) -> String {
        let first = self.text.split_whitespace().next().unwrap_or("");
        let parts: Vec<&str> = first.split('.').collect();
        let valid = parts.len() == 3
            && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if valid && first.starts_with(char::from(b'0' + (self.code / 100) as u8)) {
            return first.to_string();
        }
        format!("{}.0.0", self.code / 100)
    }

    /// `550 5.1.1 text` as the log and the bounce quote it.
    pub fn display(&self) -> String {
        format!("{} {}", self.code, self.text)
    }
}

/// Why talking to a server failed, as a whole (not per recipient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// Could not connect, or the connection broke: temporary.
    Network(String),
    /// The server's bytes were not SMTP (RFC 5321 §4.2; or sent unasked after STARTTLS): temporary, 4.5.0.
    Protocol(String),
    /// The server answered with an error where the session cannot go on.
    Refused(ServerReply),
    /// TLS was required and could not be had: temporary, 4.7.5.
    Tls(String),
}

impl ClientError {
    pub fn status(&self) -> String {
        match self {
            ClientError::Network(_) => "4.4.1".into(),
            ClientError::Protocol(_) => "4.5.0".into(),
            ClientError::Refused(r) => r.status(),
            ClientError::Tls(_) => "4.7.5".into(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Refused(r) if r.is_permanent())
    }

    pub fn text(&self) -> String {
        match self {
            ClientError::Network(t) | ClientError::Protocol(t) | ClientError::Tls(t) => t.clone(),
            ClientError::Refused(r) => r.display(),
        }
    }
}

/// Reads one reply from buffered input: `ddd-text` lines, then `ddd text` (RFC 5321 §4.2.1).
pub fn read_reply(input: &mut impl BufRead) -> Result<ServerReply, ClientError> {
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let mut raw = Vec::new();
        let n = input.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut raw).map_err(io_error)?;
        if n == 0 {
            return Err(ClientError::Network("connection closed by the server".into()));
        }
        if raw.len() > MAX_LINE || !raw.ends_with(b"\n") {
            return Err(ClientError::Protocol("reply line too long".into()));
        }
        let line = String::from_utf8_lossy(&raw).trim_end_matches(['\r', '\n']).to_string();
        let (this_code, more, text) = parse_reply_line(&line)?;
        if *code.get_or_insert(this_code) != this_code {
            return Err(ClientError::Protocol(format!("reply code changed within a reply: {line}")));
        }
        lines.push(text.to_string());
        if !more {
            let code = this_code;
            return Ok(ServerReply { code, text: lines.join(" ").trim().to_string(), lines });
        }
        if lines.len() >= MAX_LINES {
            return Err(ClientError::Protocol("reply with too many lines".into()));
        }
    }
}

fn parse_reply_line(line: &str) -> Result<(u16, bool, &str), ClientError> {
    let bad = || ClientError::Protocol(format!("malformed reply line: {:.80}", line.escape_debug()));
    let digits = line.get(..3).ok_or_else(bad)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !(b'2'..=b'5').contains(&digits.as_bytes()[0]) {
        return Err(bad());
    }
    let code: u16 = digits.parse().map_err(|_| bad())?;
    match line.as_bytes().get(3) {
        None => Ok((code, false, "")),
        Some(b' ') => Ok((code, false, &line[4..])),
        Some(b'-') => Ok((code, true, &line[4..])),
        Some(_) => Err(bad()),
    }
}

fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            ClientError::Network("timed out waiting for the server".into())
        }
        _ => ClientError::Network(e.to_string()),
    }
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// The SIZE limit; `Some(0)` means offered without a limit.
    pub size: Option<u64>,
    pub auth: Vec<String>,
}

impl Extensions {
    pub fn parse(reply: &ServerReply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => ext.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        ext
    }
}

/// Writes a message for DATA: dots at line starts doubled (§4.5.2), any CR or LF not in a
/// CRLF pair sent as a space (RFC 5321 §2.3.8: no bare CR or LF), a missing final CRLF added, then the lone dot.
pub struct DotStuffer {
    line_start: bool,
    held_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer { line_start: true, held_cr: false }
    }
}

impl DotStuffer {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.held_cr {
                self.held_cr = false;
                if b == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    continue;
                }
                self.byte(b' ', out);
            }
            match b {
                b'\r' => self.held_cr = true,
                b'\n' => self.byte(b' ', out),
                b => self.byte(b, out),
            }
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        self.line_start = false;
    }

    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.held_cr {
            self.held_cr = false;
            self.byte(b' ', out);
        }
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Standard base64 (RFC 4648), for AUTH PLAIN and LOGIN.
pub fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// TCP or TLS underneath a client session.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// When to use TLS with a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS when offered, certificate not checked (MX delivery; `relayhost_tls = may`).
    May,
    /// STARTTLS required, certificate not checked.
    Encrypt,
    /// STARTTLS required, certificate and name checked.
    Verify,
}

/// Per-step deadlines (RFC 5321 §4.5.3.2 gives the minimums).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Greeting, EHLO, MAIL, RCPT, RSET, QUIT, and each block of the message text.
    pub command: Duration,
    /// The reply after the final dot (§4.5.3.2.6: 10 minutes).
    pub data_done: Duration,
}

/// How to open a session.
pub struct Dial<'a> {
    pub addr: SocketAddr,
    /// The server's name, for TLS verification and the log.
    pub server_name: &'a str,
    pub helo: &'a str,
    pub tls: TlsPolicy,
    pub timeouts: Timeouts,
    /// `user`, `password`: AUTH after TLS (relayhost only).
    pub auth: Option<(&'a str, &'a str)>,
}

/// An open session with a server, ready for transactions.
pub struct Session {
    reader: BufReader<Stream>,
    pub extensions: Extensions,
    pub tls: bool,
    timeouts: Timeouts,
    transactions: usize,
}

/// The result of one transaction, per recipient in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    Sent(ServerReply),
    Failed(ServerReply),
}

/// One message for one server.
pub struct Transaction<'a, R: Read> {
    pub from: &'a str,
    pub recipients: &'a [String],
    pub size: u64,
    pub eight_bit: bool,
    pub smtputf8: bool,
    pub message: R,
}

impl Session {
    /// Connects, reads the greeting, says EHLO, and does STARTTLS and AUTH as asked.
    pub fn open(dial: &Dial<'_>) -> Result<Session, ClientError> {
        let stream = TcpStream::connect_timeout(&dial.addr, dial.timeouts.connect).map_err(io_error)?;
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(dial.timeouts.command)).map_err(io_error)?;
        stream.set_write_timeout(Some(dial.timeouts.command)).map_err(io_error)?;
        let mut session = Session {
            reader: BufReader::with_capacity(16 * 1024, Stream::Plain(stream)),
            extensions: Extensions::default(),
            tls: false,
            timeouts: dial.timeouts,
            transactions: 0,
        };
        let greeting = read_reply(&mut session.reader)?;
        if greeting.code != 220 {
            return Err(ClientError::Refused(greeting)); // a 554 greeting: try the next host (X15)
        }
        session.hello(dial.helo)?;
        if session.extensions.starttls {
            session.start_tls(dial)?;
        } else if dial.tls != TlsPolicy::May {
            return Err(ClientError::Tls(format!("{} does not offer STARTTLS", dial.server_name)));
        }
        if let Some((user, password)) = dial.auth {
            session.authenticate(dial.server_name, user, password)?;
        }
        Ok(session)
    }

    fn send(&mut self, line: &str) -> Result<(), ClientError> {
        let stream = self.reader.get_mut();
        stream.write_all(line.as_bytes()).and_then(|()| stream.write_all(b"\r\n")).map_err(io_error)
    }

    fn command(&mut self, line: &str) -> Result<ServerReply, ClientError> {
        self.send(line)?;
        read_reply(&mut self.reader)
    }

    fn hello(&mut self, helo: &str) -> Result<(), ClientError> {
        let reply = self.command(&format!("EHLO {helo}"))?;
        if reply.code == 250 {
            self.extensions = Extensions::parse(&reply);
            return Ok(());
        }
        let reply = self.command(&format!("HELO {helo}"))?;
        if reply.code != 250 {
            return Err(ClientError::Refused(reply));
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    fn start_tls(&mut self, dial: &Dial<'_>) -> Result<(), ClientError> {
        let reply = self.command("STARTTLS")?;
        if reply.code != 220 {
            return match dial.tls {
                TlsPolicy::May => Ok(()), // carry on in plaintext, as offered
                _ => Err(ClientError::Tls(format!("STARTTLS refused: {}", reply.display()))),
            };
        }
        // RFC 3207 §4.2: anything sent along with the 220 was injected before TLS; never read it.
        if !self.reader.buffer().is_empty() {
            return Err(ClientError::Protocol("the server sent more after its STARTTLS reply".into()));
        }
        let verify = dial.tls == TlsPolicy::Verify;
        let connector = TlsConnector::builder()
            .danger_accept_invalid_certs(!verify)
            .danger_accept_invalid_hostnames(!verify)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let placeholder = BufReader::new(Stream::Plain(self.plain_clone()?));
        let Stream::Plain(tcp) = std::mem::replace(&mut self.reader, placeholder).into_inner() else {
            return Err(ClientError::Protocol("TLS already active".into()));
        };
        let tls =
            connector.connect(dial.server_name, tcp).map_err(|e| ClientError::Tls(format!("TLS handshake: {e}")))?;
        self.reader = BufReader::with_capacity(16 * 1024, Stream::Tls(Box::new(tls)));
        self.tls = true;
        self.hello(dial.helo) // RFC 3207 §4.2: start over
    }

    fn plain_clone(&self) -> Result<TcpStream, ClientError> {
        match self.reader.get_ref() {
            Stream::Plain(s) => s.try_clone().map_err(io_error),
            Stream::Tls(_) => Err(ClientError::Protocol("TLS already active".into())),
        }
    }

    /// AUTH PLAIN, else LOGIN (RFC 4954); credentials are never sent without TLS.
    fn authenticate(&mut self, server: &str, user: &str, password: &str) -> Result<(), ClientError> {
        if !self.tls {
            return Err(ClientError::Tls(format!("{server}: no TLS, so the credentials were not sent")));
        }
        let reply = if self.extensions.auth.iter().any(|m| m == "PLAIN") {
            self.command(&format!("AUTH PLAIN {}", base64(format!("\0{user}\0{password}").as_bytes())))?
        } else if self.extensions.auth.iter().any(|m| m == "LOGIN") {
            self.command("AUTH LOGIN")?;
            self.command(&base64(user.as_bytes()))?;
            self.command(&base64(password.as_bytes()))?
        } else {
            return Err(ClientError::Protocol(format!("{server} offers no AUTH PLAIN or LOGIN")));
        };
        if reply.code != 235 {
            return Err(ClientError::Refused(reply));
        }
        Ok(())
    }

    /// One transaction: MAIL, RCPT for each recipient, DATA, the text. Pipelined when offered.
    /// `Err` is a failure of the whole transaction; per-recipient answers are in the `Ok`.
    pub fn transaction<R: Read>(&mut self, tx: Transaction<'_, R>) -> Result<Vec<RecipientResult>, ClientError> {
        if self.transactions > 0 {
            let reply = self.command("RSET")?;
            if reply.code != 250 {
                return Err(ClientError::Refused(reply));
            }
        }
        self.transactions += 1;
        if let Some(limit) = self.extensions.size.filter(|&l| l > 0 && tx.size > l) {
            let text = format!("5.3.4 message size {} exceeds the server's limit of {limit}", tx.size);
            return Err(ClientError::Refused(ServerReply { code: 552, text: text.clone(), lines: vec![text] }));
        }
        let mut mail = format!("MAIL FROM:<{}>", tx.from);
        if self.extensions.size.is_some() {
            mail += &format!(" SIZE={}", tx.size);
        }
        if tx.eight_bit && self.extensions.eight_bit_mime {
            mail += " BODY=8BITMIME";
        }
        if tx.smtputf8 {
            if !self.extensions.smtputf8 {
                let text = "5.6.7 the server does not offer SMTPUTF8".to_string();
                return Err(ClientError::Refused(ServerReply { code: 553, text: text.clone(), lines: vec![text] }));
            }
            mail += " SMTPUTF8";
        }
        let mut commands = vec![mail];
        commands.extend(tx.recipients.iter().map(|r| format!("RCPT TO:<{r}>")));
        commands.push("DATA".into());
        let replies = if self.extensions.pipelining { self.pipelined(&commands)? } else { self.one_by_one(&commands)? };
        let (mail_reply, rest) =
            replies.split_first().ok_or_else(|| ClientError::Protocol("no reply to MAIL".into()))?;
        let rcpt_replies = &rest[..tx.recipients.len().min(rest.len())];
        let data_reply = rest.get(tx.recipients.len());
        let accepted = rcpt_replies.iter().filter(|r| r.is_positive()).count();
        let data_open = data_reply.is_some_and(|r| r.code == 354);
        if !mail_reply.is_positive() || accepted == 0 {
            // RFC 2920 §3.1: a server that opened DATA anyway gets an empty text, so that it
            // is back in command state; nothing is delivered without an accepted recipient.
            if data_open {
                self.send_text(tx.message, true)?;
                let _ = self.final_reply()?;
            }
            if !mail_reply.is_positive() {
                return Err(ClientError::Refused(mail_reply.clone()));
            }
        } else if data_open {
            self.send_text(tx.message, false)?;
        } else if let Some(r) = data_reply {
            return Err(ClientError::Refused(r.clone()));
        }
        let done = if accepted > 0 { Some(self.final_reply()?) } else { None };
        Ok(rcpt_replies
            .iter()
            .map(|r| match (&done, r.is_positive()) {
                (Some(d), true) if d.is_positive() => RecipientResult::Sent(d.clone()),
                (Some(d), true) => RecipientResult::Failed(d.clone()),
                _ => RecipientResult::Failed(r.clone()),
            })
            .collect())
    }

    /// RFC 2920: send the group, then read every reply in order.
    fn pipelined(&mut self, commands: &[String]) -> Result<Vec<ServerReply>, ClientError> {
        let mut batch = String::new();
        for c in commands {
            batch += c;
            batch += "\r\n";
        }
        self.reader.get_mut().write_all(batch.as_bytes()).map_err(io_error)?;
        commands.iter().map(|_| read_reply(&mut self.reader)).collect()
    }

    /// Without PIPELINING: stop after a failed MAIL, and skip DATA when no RCPT was accepted.
    fn one_by_one(&mut self, commands: &[String]) -> Result<Vec<ServerReply>, ClientError> {
        let mut replies = Vec::new();
        let last = commands.len() - 1;
        for (i, c) in commands.iter().enumerate() {
            if i == last && !replies.iter().skip(1).any(|r: &ServerReply| r.is_positive()) {
                break;
            }
            let reply = self.command(c)?;
            let stop = i == 0 && !reply.is_positive();
            replies.push(reply);
            if stop {
                break;
            }
        }
        Ok(replies)
    }

    fn send_text(&mut self, mut message: impl Read, empty: bool) -> Result<(), ClientError> {
        let mut stuffer = DotStuffer::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut out = Vec::with_capacity(70 * 1024);
        loop {
            let n = match empty {
                true => 0,
                false => {
                    message.read(&mut buf).map_err(|e| ClientError::Network(format!("reading the queue file: {e}")))?
                }
            };
            if n == 0 {
                break;
            }
            out.clear();
            stuffer.push(&buf[..n], &mut out);
            self.reader.get_mut().write_all(&out).map_err(io_error)?;
        }
        out.clear();
        stuffer.finish(&mut out);
        self.reader.get_mut().write_all(&out).map_err(io_error)
    }

    fn final_reply(&mut self) -> Result<ServerReply, ClientError> {
        self.set_read_timeout(self.timeouts.data_done)?;
        let reply = read_reply(&mut self.reader);
        self.set_read_timeout(self.timeouts.command)?;
        reply.map_err(|e| match e {
            // No reply after the dot: it may have been accepted; sending again risks a duplicate,
            // which RFC 1047 accepts over a loss.
            ClientError::Network(t) => ClientError::Network(format!("{t} after the message was sent")),
            other => other,
        })
    }

    fn set_read_timeout(&self, t: Duration) -> Result<(), ClientError> {
        let tcp = match self.reader.get_ref() {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        };
        tcp.set_read_timeout(Some(t)).map_err(io_error)
    }

    /// Whether a kept session can still be used: the server has not closed it or sent anything
    /// unasked (a 421 before closing, say) while it sat idle.
    pub fn is_usable(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return false;
        }
        let tcp = match self.reader.get_ref() {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        };
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut byte = [0u8; 1];
        let idle = matches!(tcp.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        tcp.set_nonblocking(false).is_ok() && idle
    }

    /// Says QUIT and closes; errors do not matter any more.
    pub fn quit(mut self) {
        let _ = self.command("QUIT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(bytes: &[u8]) -> Result<ServerReply, ClientError> {
        read_reply(&mut BufReader::new(bytes))
    }

    #[test]
    fn multi_line_replies() {
        let r = reply(b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n").unwrap();
        assert_eq!(r.code, 250);
        let ext = Extensions::parse(&r);
        assert!(ext.pipelining && ext.starttls && ext.size == Some(1000) && !ext.eight_bit_mime);
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        assert!(reply(b"250-\r\n250 x\r\n").is_ok());
        assert!(matches!(reply(b"2\r\n"), Err(ClientError::Protocol(_))));
        assert!(matches!(reply(b"250-x\r\n550 y\r\n"), Err(ClientError::Protocol(_))));
        assert!(matches!(reply(b"hello\r\n"), Err(ClientError::Protocol(_))));
        assert!(matches!(reply(b"250"), Err(ClientError::Protocol(_))));
        assert!(matches!(reply(b""), Err(ClientError::Network(_))));
        let huge = vec![b'x'; 10 << 20];
        assert!(matches!(reply(&[b"250 ".as_slice(), &huge].concat()), Err(ClientError::Protocol(_))));
        let endless = b"250-x\r\n".repeat(100_000);
        assert!(matches!(reply(&endless), Err(ClientError::Protocol(_))));
        assert_eq!(reply(b"250\r\n").unwrap().code, 250);
    }

    #[test]
    fn enhanced_status_is_taken_only_when_it_agrees() {
        assert_eq!(reply(b"550 5.1.1 no\r\n").unwrap().status(), "5.1.1");
        assert_eq!(reply(b"550 no such user\r\n").unwrap().status(), "5.0.0");
        assert_eq!(reply(b"451 5.1.1 mixed\r\n").unwrap().status(), "4.0.0");
    }

    #[test]
    fn dot_stuffing_and_stray_line_ends() {
        let mut out = Vec::new();
        let mut s = DotStuffer::default();
        s.push(b"a\r\n.\r\nb\r\n..x\r\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a\r\n..\r\nb\r\n...x\r\n.\r\n");
        let mut out = Vec::new();
        let mut s = DotStuffer::default();
        s.push(b"a\n.\nb", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a . b\r\n.\r\n", "stray LF becomes a space and never ends a line");
        for split in 0..6 {
            let input = b"x\r\n.y\r\n";
            let mut out = Vec::new();
            let mut s = DotStuffer::default();
            s.push(&input[..split], &mut out);
            s.push(&input[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, b"x\r\n..y\r\n.\r\n", "split {split}");
        }
        let mut out = Vec::new();
        DotStuffer::default().finish(&mut out);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn base64_vectors() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(b"\0user\0pass"), "AHVzZXIAcGFzcw==");
    }
}
