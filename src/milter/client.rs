//! One connection to one milter: opened with a deadline, negotiated, then asked step by step.
//! Every wait is bounded by the milter's timeout and by the caller's deadline, whichever is
//! first, so a milter that hangs cannot hold a session past its own limits.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::protocol::{self, Answer, Change, Garbage, Negotiated, Packets, Stage};

/// Where a milter listens: `inet:HOST:PORT` or `unix:/PATH`, as Postfix writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Inet(String, u16),
    Unix(PathBuf),
}

impl Address {
    pub fn parse(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{text}: a unix socket's path must be absolute"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let rest = text.strip_prefix("inet:").ok_or_else(|| format!("{text}: not inet:HOST:PORT or unix:/PATH"))?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{text}: no port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().ok().filter(|&p| p != 0).ok_or_else(|| format!("{text}: bad port"))?;
        if host.is_empty() {
            return Err(format!("{text}: no host"));
        }
        Ok(Address::Inet(host.to_string(), port))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Inet(host, port) if host.contains(':') => write!(f, "inet:[{host}]:{port}"),
            Address::Inet(host, port) => write!(f, "inet:{host}:{port}"),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why a milter could not be asked: it gets `milter_default_action`.
#[derive(Debug)]
pub enum Failure {
    Down(io::Error),
    TimedOut,
    Garbage(Garbage),
    /// It closed the connection.
    Closed,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Down(e) => write!(f, "cannot reach it: {e}"),
            Failure::TimedOut => f.write_str("no reply in time"),
            Failure::Garbage(g) => write!(f, "it sent {g}"),
            Failure::Closed => f.write_str("it closed the connection"),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, wait: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(wait)).and(s.set_write_timeout(Some(wait))),
            Stream::Unix(s) => s.set_read_timeout(Some(wait)).and(s.set_write_timeout(Some(wait))),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A negotiated connection to a milter.
pub struct Milter {
    stream: Stream,
    packets: Packets,
    /// What it asked for in the negotiation.
    pub negotiated: Negotiated,
    /// Each reply may take this long (`milter_timeout`).
    timeout: Duration,
}

impl Milter {
    /// Connects and negotiates, within `timeout` and before `deadline`.
    pub fn open(address: &Address, timeout: Duration, deadline: Instant) -> Result<Milter, Failure> {
        let wait = bounded(timeout, deadline)?;
        let stream = match address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(Failure::Down)?),
            Address::Inet(host, port) => {
                let addrs: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs().map_err(Failure::Down)?.collect();
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut found = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, wait) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let stream = found.ok_or(Failure::Down(last))?;
                let _ = stream.set_nodelay(true);
                Stream::Tcp(stream)
            }
        };
        let placeholder = Negotiated { version: 0, actions: 0, steps: 0, macros: Vec::new() };
        let mut milter = Milter { stream, packets: Packets::default(), negotiated: placeholder, timeout };
        milter.send(&protocol::negotiate(), deadline)?;
        match milter.read_answer(deadline)? {
            Answer::Negotiated(n) if n.version >= 2 => milter.negotiated = n,
            _ => return Err(Failure::Garbage(Garbage::Malformed("negotiation"))),
        }
        Ok(milter)
    }

    /// Sends packets that are never answered (macros, abort, quit).
    pub fn tell(&mut self, packet: &[u8], deadline: Instant) -> Result<(), Failure> {
        self.send(packet, deadline)
    }

    /// One step of the transaction as the negotiation says: not sent when the milter asked
    /// to be left out of it, sent without waiting when it asked not to answer it (rspamd
    /// answers nothing but the end of the message), else asked. `Continue` when not asked.
    pub fn step(&mut self, stage: Stage, packet: &[u8], deadline: Instant) -> Result<(Vec<Change>, Answer), Failure> {
        let (left_out, unanswered) = stage.bits();
        if self.negotiated.leaves_out(left_out) {
            return Ok((Vec::new(), Answer::Continue));
        }
        if self.negotiated.leaves_out(unanswered) {
            self.send(packet, deadline)?;
            return Ok((Vec::new(), Answer::Continue));
        }
        self.ask(packet, deadline)
    }

    /// Sends one packet and reads until its verdict: the changes asked for on the way (only
    /// at the end of a message may there be any), then the answer that ends the step.
    pub fn ask(&mut self, packet: &[u8], deadline: Instant) -> Result<(Vec<Change>, Answer), Failure> {
        self.send(packet, deadline)?;
        let mut changes = Vec::new();
        loop {
            match self.read_answer(deadline)? {
                Answer::Progress => continue, // it is still working: a new wait begins
                Answer::Change(change) => changes.push(change),
                Answer::Negotiated(_) => return Err(Failure::Garbage(Garbage::Malformed("reply"))),
                verdict => return Ok((changes, verdict)),
            }
        }
    }

    fn send(&mut self, packet: &[u8], deadline: Instant) -> Result<(), Failure> {
        let wait = bounded(self.timeout, deadline)?;
        self.stream.set_timeouts(wait).map_err(Failure::Down)?;
        self.stream.write_all(packet).map_err(timed_out)
    }

    fn read_answer(&mut self, deadline: Instant) -> Result<Answer, Failure> {
        let mut buf = [0u8; 8192];
        loop {
            if let Some((command, data)) = self.packets.next_packet().map_err(Failure::Garbage)? {
                return protocol::answer(command, &data).map_err(Failure::Garbage);
            }
            let wait = bounded(self.timeout, deadline)?;
            self.stream.set_timeouts(wait).map_err(Failure::Down)?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => self.packets.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timed_out(e)),
            }
        }
    }
}

/// The milter's timeout, cut short by the deadline; `TimedOut` when the deadline is past.
fn bounded(timeout: Duration, deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    let wait = timeout.min(left);
    if wait.is_zero() { Err(Failure::TimedOut) } else { Ok(wait) }
}

fn timed_out(e: io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::TimedOut,
        _ => Failure::Down(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::milter::protocol::{cmd, packet};
    use std::net::TcpListener;

    #[test]
    fn addresses_as_postfix_writes_them() {
        assert_eq!(Address::parse("inet:127.0.0.1:11332"), Ok(Address::Inet("127.0.0.1".into(), 11332)));
        assert_eq!(Address::parse("inet:[::1]:8891"), Ok(Address::Inet("::1".into(), 8891)));
        assert_eq!(Address::parse("inet:[::1]:8891").unwrap().to_string(), "inet:[::1]:8891");
        assert_eq!(Address::parse("unix:/run/rspamd/milter.sock"), Ok(Address::Unix("/run/rspamd/milter.sock".into())));
        for bad in ["127.0.0.1:25", "inet:host", "inet::25", "inet:h:0", "inet:h:x", "unix:relative"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    /// A milter on a loopback port that answers each packet it reads with `script`'s next
    /// replies (none for packets that get none), or, at `None`, stops answering.
    fn fake(script: Vec<Option<Vec<Vec<u8>>>>) -> Address {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut packets = Packets::default();
            let mut buf = [0u8; 4096];
            let mut script = script.into_iter();
            loop {
                while let Ok(Some(_)) = packets.next_packet() {
                    match script.next() {
                        Some(Some(replies)) => {
                            for r in replies {
                                s.write_all(&r).unwrap();
                            }
                        }
                        Some(None) => {
                            std::thread::sleep(Duration::from_secs(5));
                            return;
                        }
                        None => return,
                    }
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => packets.push(&buf[..n]),
                }
            }
        });
        Address::Inet("127.0.0.1".into(), port)
    }

    fn negotiation() -> Vec<u8> {
        let mut data = Vec::new();
        for n in [6u32, 0x3F, 0x80] {
            data.extend_from_slice(&n.to_be_bytes());
        }
        packet(b'O', &data)
    }

    #[test]
    fn a_step_reads_changes_and_progress_up_to_its_verdict() {
        let address = fake(vec![
            Some(vec![negotiation()]),
            Some(vec![packet(b'c', b"")]),
            Some(vec![]),
            Some(vec![packet(b'p', b""), packet(b'h', b"X-Spam\0Yes\0"), packet(b'a', b"")]),
        ]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut m = Milter::open(&address, Duration::from_secs(2), deadline).unwrap();
        assert_eq!((m.negotiated.version, m.negotiated.actions), (6, 0x3F));
        assert!(m.negotiated.leaves_out(protocol::step::NO_REPLY_HEADER));
        assert_eq!(m.ask(&protocol::helo("client.test"), deadline).unwrap(), (vec![], Answer::Continue));
        // Headers go unanswered, as negotiated: the script has no reply for this packet.
        let unanswered = m.step(Stage::Header, &protocol::header("Subject", b"x"), deadline).unwrap();
        assert_eq!(unanswered, (vec![], Answer::Continue));
        let (changes, verdict) = m.ask(&protocol::bare(cmd::BODYEOB), deadline).unwrap();
        assert_eq!(changes, vec![Change::AddHeader { name: "X-Spam".into(), value: "Yes".into() }]);
        assert_eq!(verdict, Answer::Accept);
    }

    #[test]
    fn a_milter_that_hangs_is_given_up_at_its_timeout_or_the_deadline() {
        let address = fake(vec![Some(vec![negotiation()]), None]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut m = Milter::open(&address, Duration::from_millis(300), deadline).unwrap();
        let started = Instant::now();
        assert!(matches!(m.ask(&protocol::helo("x"), deadline), Err(Failure::TimedOut)));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "{took:?}");
        // The session's deadline comes first when it is nearer than the milter's timeout.
        let address = fake(vec![Some(vec![negotiation()]), None]);
        let mut m = Milter::open(&address, Duration::from_secs(30), Instant::now() + Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        let near = Instant::now() + Duration::from_millis(200);
        assert!(matches!(m.ask(&protocol::helo("x"), near), Err(Failure::TimedOut)));
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn garbage_a_closed_connection_and_no_milter_are_failures() {
        let address = fake(vec![Some(vec![b"\0\0\0\x01Z".to_vec()])]);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(Milter::open(&address, Duration::from_secs(2), deadline), Err(Failure::Garbage(_))));
        let address = fake(vec![Some(vec![negotiation()])]);
        let mut m = Milter::open(&address, Duration::from_secs(2), deadline).unwrap();
        assert!(matches!(m.ask(&protocol::helo("x"), deadline), Err(Failure::Closed)));
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let nobody = Address::Inet("127.0.0.1".into(), closed);
        assert!(matches!(Milter::open(&nobody, Duration::from_secs(2), deadline), Err(Failure::Down(_))));
    }
}
