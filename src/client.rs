//! The SMTP client's I/O: a TCP connection, TLS when the protocol asks for it, and the waits;
//! and LMTP's (RFC 2033), over a TCP or a Unix socket, with the same machines.
//!
//! Every decision between two replies is made by the state machines of `smtp::client`; this
//! loop only writes what they say, reads replies with `smtp::reply::parse_reply` (bounded:
//! a hostile server cannot grow memory) and gives each one back. Every wait has its own
//! deadline (RFC 5321 §4.5.3.2).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use native_tls::{TlsConnector, TlsStream};

use crate::smtp::client::{
    Envelope, Extensions, OpenStep, Opening, RecipientResult, SmtpError, TlsWant, Transaction, TxStep, Wait,
};
use crate::smtp::command::Command;
use crate::smtp::line::DotStuffer;
use crate::smtp::reply::{Parsed, Reply, parse_reply};

/// Why talking to a server failed, as a whole (not per recipient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// Could not connect, or the connection broke or timed out. `after_data`: it broke while
    /// waiting for the reply to the final dot, so the server may have taken the message.
    Network { text: String, after_data: bool },
    /// The TLS handshake failed.
    Tls(String),
    /// The protocol went wrong: a refusal, bytes that are not SMTP, a limit.
    Smtp(SmtpError),
    /// Reading the message from our own queue file failed: a local fault, not the network's.
    QueueRead(String),
}

impl ClientError {
    fn network(e: &io::Error) -> ClientError {
        let text = match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out waiting for the server".to_string(),
            _ => e.to_string(),
        };
        ClientError::Network { text, after_data: false }
    }
}

/// TCP or TLS underneath a client session: native-tls, or OpenSSL itself where the
/// certificate chain must be matched against DANE records (native-tls does not hand it over).
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Dane(Box<openssl::ssl::SslStream<TcpStream>>),
    /// LMTP to a local delivery agent's socket.
    Unix(UnixStream),
}

impl Stream {
    /// The TCP connection underneath; `None` for a Unix socket.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref()),
            Stream::Dane(s) => Some(s.get_ref()),
            Stream::Unix(_) => None,
        }
    }

    fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        match (self, self.tcp()) {
            (Stream::Unix(s), _) => s.set_read_timeout(Some(timeout)),
            (_, Some(tcp)) => tcp.set_read_timeout(Some(timeout)),
            _ => Ok(()),
        }
    }

    fn set_write_timeout(&self, timeout: Duration) -> io::Result<()> {
        match (self, self.tcp()) {
            (Stream::Unix(s), _) => s.set_write_timeout(Some(timeout)),
            (_, Some(tcp)) => tcp.set_write_timeout(Some(timeout)),
            _ => Ok(()),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Dane(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf),
            Stream::Tls(s) => s.write_all(buf),
            Stream::Dane(s) => s.write_all(buf),
            Stream::Unix(s) => s.write_all(buf),
        }
    }
}

/// Where an LMTP server listens (`mailbox_transport = lmtp:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpAddress {
    Unix(std::path::PathBuf),
    Inet(String, u16),
}

impl LmtpAddress {
    /// `lmtp:unix:/PATH`, `lmtp:HOST:PORT` or `lmtp:[IPV6]:PORT` (the port defaults to 24).
    pub fn parse(text: &str) -> Result<LmtpAddress, String> {
        let bad = || format!("`{text}`: expected lmtp:unix:/path or lmtp:host:port");
        let rest = text.strip_prefix("lmtp:").ok_or_else(bad)?;
        if let Some(path) = rest.strip_prefix("unix:") {
            return match path.starts_with('/') {
                true => Ok(LmtpAddress::Unix(path.into())),
                false => Err(format!("`{text}`: the socket's path must be absolute")),
            };
        }
        let (host, port) = match rest.strip_prefix('[') {
            Some(inner) => {
                let (host, after) = inner.split_once(']').ok_or_else(bad)?;
                (host, after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let port = port.map_or(Ok(24), |p| p.parse().ok().filter(|&p| p != 0).ok_or_else(bad))?;
        let plain = |c: char| c.is_ascii_alphanumeric() || ".-:".contains(c);
        if host.is_empty() || !host.chars().all(plain) {
            return Err(bad());
        }
        Ok(LmtpAddress::Inet(host.to_string(), port))
    }

    /// Whether something answers there now: a connection opened and closed (`--check`).
    pub fn probe(&self, timeout: Duration) -> io::Result<()> {
        self.connect(timeout).map(drop)
    }

    /// A connection: the Unix socket, or the first of the host's addresses that answers
    /// within `timeout` (a failed name lookup is said with the host's name).
    fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        match self {
            LmtpAddress::Unix(path) => UnixStream::connect(path).map(Stream::Unix),
            LmtpAddress::Inet(host, port) => {
                let addrs = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), *port))
                    .map_err(|e| io::Error::new(e.kind(), format!("{host}: {e}")))?;
                let mut last = io::Error::other(format!("{host}: no address"));
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            return Ok(Stream::Plain(stream));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }
}

impl std::fmt::Display for LmtpAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpAddress::Unix(path) => write!(f, "lmtp:unix:{}", path.display()),
            LmtpAddress::Inet(host, port) if host.contains(':') => write!(f, "lmtp:[{host}]:{port}"),
            LmtpAddress::Inet(host, port) => write!(f, "lmtp:{host}:{port}"),
        }
    }
}

/// When to use TLS with a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// STARTTLS when offered, certificate not checked (MX delivery; `relayhost_tls = may`).
    May,
    /// STARTTLS required, certificate not checked.
    Encrypt,
    /// STARTTLS required, certificate and name checked.
    Verify,
    /// STARTTLS required, the certificate chain matched against the server's TLSA records
    /// (`Dial::dane`, RFC 7672 §3).
    Dane,
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
    /// The server's usable, authenticated TLSA records, for `TlsPolicy::Dane`.
    pub dane: &'a [crate::dane::Tlsa],
}

/// An open session with a server, ready for transactions.
pub struct Session {
    stream: Stream,
    /// Received and not yet parsed; bounded by the reply parser's limits.
    received: Vec<u8>,
    pub extensions: Extensions,
    pub tls: bool,
    /// The certificate chain the server sent (its own first), when TLS is on.
    pub peer_chain: Vec<openssl::x509::X509>,
    timeouts: Timeouts,
    /// The wait the socket's read timeout is set for, so it is changed only when that changes.
    read_wait: Wait,
    transactions: usize,
}

impl Session {
    /// Connects, then runs the opening (greeting, EHLO, STARTTLS and AUTH as asked).
    pub fn open(dial: &Dial<'_>) -> Result<Session, ClientError> {
        let stream =
            TcpStream::connect_timeout(&dial.addr, dial.timeouts.connect).map_err(|e| ClientError::network(&e))?;
        let _ = stream.set_nodelay(true);
        stream.set_write_timeout(Some(dial.timeouts.command)).map_err(|e| ClientError::network(&e))?;
        let want = if dial.tls == TlsPolicy::May { TlsWant::May } else { TlsWant::Required };
        let credentials = dial.auth.map(|(u, p)| (u.to_string(), p.to_string()));
        let opening = Opening::new(dial.helo, want, credentials);
        Session::opened(Stream::Plain(stream), dial.timeouts, opening, Some(dial))
    }

    /// An LMTP session (RFC 2033) with a local delivery agent: connect, greeting, LHLO.
    pub fn open_lmtp(to: &LmtpAddress, helo: &str, timeouts: Timeouts) -> Result<Session, ClientError> {
        let stream = to.connect(timeouts.connect).map_err(|e| match to {
            LmtpAddress::Unix(path) => {
                ClientError::Network { text: format!("{}: {e}", path.display()), after_data: false }
            }
            LmtpAddress::Inet(..) => ClientError::network(&e),
        })?;
        stream.set_write_timeout(timeouts.command).map_err(|e| ClientError::network(&e))?;
        Session::opened(stream, timeouts, Opening::lmtp(helo), None)
    }

    /// Runs `opening` on a connected stream until the session is ready.
    fn opened(
        stream: Stream,
        timeouts: Timeouts,
        mut opening: Opening,
        dial: Option<&Dial<'_>>,
    ) -> Result<Session, ClientError> {
        stream.set_read_timeout(timeouts.command).map_err(|e| ClientError::network(&e))?;
        let mut session = Session {
            stream,
            received: Vec::new(),
            extensions: Extensions::default(),
            tls: false,
            peer_chain: Vec::new(),
            timeouts,
            read_wait: Wait::Command,
            transactions: 0,
        };
        loop {
            match opening.step() {
                OpenStep::Send(bytes) => {
                    session.send(&bytes)?;
                    opening.receive(session.reply(Wait::Command)?);
                }
                OpenStep::Read => opening.receive(session.reply(Wait::Command)?),
                OpenStep::StartTls if !session.received.is_empty() => opening.injected(),
                OpenStep::StartTls => {
                    let dial = dial.ok_or(ClientError::Smtp(SmtpError::Unexpected))?;
                    session.start_tls(dial)?;
                    opening.tls_started();
                }
                OpenStep::Ready => break,
                OpenStep::Failed(e) => return Err(ClientError::Smtp(e)),
            }
        }
        session.extensions = opening.extensions().clone();
        session.tls = opening.encrypted();
        Ok(session)
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes).map_err(|e| ClientError::network(&e))
    }

    /// Reads until one whole reply is in, within the wait's deadline for each read.
    fn reply(&mut self, wait: Wait) -> Result<Reply, ClientError> {
        if wait != self.read_wait {
            let timeout = match wait {
                Wait::Command => self.timeouts.command,
                Wait::DataDone => self.timeouts.data_done,
            };
            self.stream.set_read_timeout(timeout).map_err(|e| ClientError::network(&e))?;
            self.read_wait = wait;
        }
        let mut buf = [0u8; 4096];
        loop {
            match parse_reply(&self.received) {
                Parsed::Reply(reply, used) => {
                    self.received.drain(..used);
                    return Ok(reply);
                }
                Parsed::Error(e) => return Err(ClientError::Smtp(SmtpError::Protocol(e))),
                Parsed::Partial => {}
            }
            let n = self.stream.read(&mut buf).map_err(|e| ClientError::network(&e))?;
            if n == 0 {
                let text = "connection closed by the server".to_string();
                return Err(ClientError::Network { text, after_data: false });
            }
            self.received.extend_from_slice(&buf[..n]);
        }
    }

    fn start_tls(&mut self, dial: &Dial<'_>) -> Result<(), ClientError> {
        if dial.tls == TlsPolicy::Dane {
            return self.start_dane(dial);
        }
        let verify = dial.tls == TlsPolicy::Verify;
        let connector = TlsConnector::builder()
            .danger_accept_invalid_certs(!verify)
            .danger_accept_invalid_hostnames(!verify)
            .build()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let tcp = self.tcp()?.try_clone().map_err(|e| ClientError::network(&e))?;
        let old = std::mem::replace(&mut self.stream, Stream::Plain(tcp));
        let Stream::Plain(tcp) = old else { return Err(ClientError::Tls("TLS already active".into())) };
        let tls =
            connector.connect(dial.server_name, tcp).map_err(|e| ClientError::Tls(format!("TLS handshake: {e}")))?;
        let leaf = tls.peer_certificate().ok().flatten().and_then(|c| c.to_der().ok());
        self.peer_chain = leaf.and_then(|der| openssl::x509::X509::from_der(&der).ok()).into_iter().collect();
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// TLS whose certificate chain must match the server's TLSA records (RFC 7672 §3): the
    /// handshake takes any chain, which `dane::verify` then checks before a command is sent.
    fn start_dane(&mut self, dial: &Dial<'_>) -> Result<(), ClientError> {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let tls = |e: &dyn std::fmt::Display| ClientError::Tls(format!("TLS handshake: {e}"));
        let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| tls(&e))?;
        builder.set_verify(SslVerifyMode::NONE);
        let mut config = builder.build().configure().map_err(|e| tls(&e))?;
        config.set_verify_hostname(false);
        let tcp = self.tcp()?.try_clone().map_err(|e| ClientError::network(&e))?;
        let old = std::mem::replace(&mut self.stream, Stream::Plain(tcp));
        let Stream::Plain(tcp) = old else { return Err(ClientError::Tls("TLS already active".into())) };
        let stream = config.connect(dial.server_name, tcp).map_err(|e| tls(&e))?;
        let chain: Vec<openssl::x509::X509> =
            stream.ssl().peer_cert_chain().map(|c| c.iter().map(|x| x.to_owned()).collect()).unwrap_or_default();
        let matched = crate::dane::verify(dial.dane, &chain, dial.server_name).map_err(ClientError::Tls)?;
        log::debug!("{}: {matched} match", dial.server_name);
        self.peer_chain = chain;
        self.stream = Stream::Dane(Box::new(stream));
        Ok(())
    }

    /// The TCP connection, for TLS (never on a Unix socket).
    fn tcp(&self) -> Result<&TcpStream, ClientError> {
        self.stream.tcp().ok_or_else(|| ClientError::Tls("no TLS on a Unix socket".into()))
    }

    /// One transaction; `Err` is a failure of the whole transaction, per-recipient answers
    /// are in the `Ok`.
    pub fn transaction(
        &mut self,
        envelope: &Envelope,
        message: impl Read,
    ) -> Result<Vec<RecipientResult>, ClientError> {
        let mut tx = Transaction::new(&self.extensions, envelope, self.transactions > 0);
        self.transactions += 1;
        let mut message = Some(message);
        loop {
            match tx.step() {
                TxStep::Send(bytes) => self.send(&bytes)?,
                TxStep::Read(Wait::Command) => tx.receive(self.reply(Wait::Command)?),
                TxStep::Read(Wait::DataDone) => {
                    // No reply after the dot: it may have been accepted; sending again risks a
                    // duplicate, which RFC 1047 prefers over a loss.
                    let reply = self.reply(Wait::DataDone).map_err(|e| match e {
                        ClientError::Network { text, .. } => ClientError::Network { text, after_data: true },
                        other => other,
                    })?;
                    tx.receive(reply);
                }
                TxStep::Text { empty } => {
                    let text = if empty { None } else { message.take() };
                    self.send_text(text)?;
                }
                TxStep::Done(result) => return result.map_err(ClientError::Smtp),
            }
        }
    }

    fn send_text(&mut self, message: Option<impl Read>) -> Result<(), ClientError> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::with_capacity(70 * 1024);
        if let Some(mut message) = message {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = message.read(&mut buf).map_err(|e| ClientError::QueueRead(e.to_string()))?;
                if n == 0 {
                    break;
                }
                out.clear();
                stuffer.push(&buf[..n], &mut out);
                self.send(&out)?;
            }
        }
        out.clear();
        stuffer.finish(&mut out);
        self.send(&out)
    }

    /// Whether this session's verified certificate also serves `host` (a kept session is
    /// reused for another MX name at the same address when it does): a subjectAltName
    /// dNSName equal to it, or a wildcard for its first label (RFC 6125 §6.4.3).
    pub fn certificate_names(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let Some(names) = self.peer_chain.first().and_then(|c| c.subject_alt_names()) else { return false };
        names.iter().filter_map(|n| n.dnsname()).any(|name| crate::dns::name_matches(&name.to_ascii_lowercase(), &host))
    }

    /// Whether a kept session can still be used: the server has not closed it or sent anything
    /// unasked (a 421 before closing, say) while it sat idle.
    pub fn is_usable(&self) -> bool {
        if !self.received.is_empty() {
            return false;
        }
        let socket = match &self.stream {
            Stream::Unix(unix) => socket2::SockRef::from(unix),
            _ => match self.stream.tcp() {
                Some(tcp) => socket2::SockRef::from(tcp),
                None => return false,
            },
        };
        let mut byte = [std::mem::MaybeUninit::new(0u8)];
        let waiting = socket.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
        matches!(waiting, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Says QUIT and closes; errors do not matter any more.
    pub fn quit(mut self) {
        if self.send(&Command::Quit.to_line()).is_ok() {
            let _ = self.reply(Wait::Command);
        }
    }
}
