//! A session's connection: TCP, TLS or a pipe, with a read deadline and a bounded reply buffer.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;

use crate::smtp::reply::Reply;
use crate::sys;

/// Replies are sent at once past this, so a client that never reads cannot grow memory.
const MAX_PENDING_OUTPUT: usize = 16 * 1024;

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// The byte stream under a session.
pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<SslStream<TcpStream>>),
    /// Only while the transport is being replaced.
    Closed,
    /// inetd with pipes (tests, `socat`): no socket options, so deadlines use poll(2).
    Pipe {
        input: File,
        output: File,
    },
}

/// A connection with a pending-reply buffer and a read deadline.
/// Replies are flushed just before a read would block: pipelining for free (RFC 2920 §3.2).
pub struct Conn {
    pub transport: Transport,
    pending: Vec<u8>,
    pub deadline: Option<Instant>,
    /// The receive timeout last set on the socket, to skip a setsockopt per read
    /// (`next_timeout`).
    pub read_timeout: Option<Duration>,
    /// A write failed or stalled past its timeout: the peer is not reading, so nothing more
    /// is written (not even a 421), and every later read or write fails at once.
    write_failed: bool,
}

impl Conn {
    pub fn new(transport: Transport) -> Conn {
        Conn { transport, pending: Vec::with_capacity(1024), deadline: None, read_timeout: None, write_failed: false }
    }

    pub fn queue(&mut self, reply: &Reply) -> io::Result<()> {
        reply.write_to(&mut self.pending);
        if self.pending.len() > MAX_PENDING_OUTPUT {
            self.flush()?;
        }
        Ok(())
    }

    fn remaining(&self) -> io::Result<Option<Duration>> {
        match self.deadline.map(|d| d.saturating_duration_since(Instant::now())) {
            Some(left) if left.is_zero() => Err(io::ErrorKind::TimedOut.into()),
            other => Ok(other),
        }
    }

    /// The socket timeout for the next read, when it must change. What is set already stays
    /// while it is no longer than the time left (a read it ends early is retried with less)
    /// and at least a quarter of it, so that the next command, whose deadline is a moment
    /// later each time, or the longer wait for the message, costs no setsockopt(2). Else it
    /// is the time left less a sixteenth, which the following commands' deadlines, each a
    /// little shorter than the last, still find long enough (under two seconds: the time left
    /// itself, so the last stretch before a deadline is one read).
    fn next_timeout(&mut self, left: Option<Duration>) -> Option<Option<Duration>> {
        let keep = match (self.read_timeout, left) {
            (Some(set), Some(left)) => set <= left && set >= left / 4,
            (None, None) => true,
            _ => false,
        };
        if keep {
            return None;
        }
        let shaved = |left: Duration| if left >= Duration::from_secs(2) { left - left / 16 } else { left };
        self.read_timeout = left.map(shaved);
        Some(self.read_timeout)
    }

    /// The TLS version and cipher in use, for the `Received:` header; `None` in plaintext.
    pub fn tls_summary(&self) -> Option<String> {
        let Transport::Tls(s) = &self.transport else { return None };
        let cipher = s.ssl().current_cipher().map_or("unknown", |c| c.name());
        Some(format!("{} with cipher {cipher}", s.ssl().version_str()))
    }

    /// `TLSv1.3` and the like, under TLS.
    pub fn tls_version(&self) -> Option<String> {
        let Transport::Tls(s) = &self.transport else { return None };
        Some(s.ssl().version_str().to_string())
    }

    /// The peer's port, on a socket.
    pub fn peer_port(&self) -> Option<u16> {
        match &self.transport {
            Transport::Tcp(s) => s.peer_addr().ok().map(|a| a.port()),
            Transport::Tls(s) => s.get_ref().peer_addr().ok().map(|a| a.port()),
            _ => None,
        }
    }

    pub fn shutdown(&mut self) {
        match &mut self.transport {
            Transport::Tcp(s) => {
                let _ = s.shutdown(Shutdown::Both);
            }
            Transport::Tls(s) => {
                if !self.write_failed {
                    let _ = s.shutdown(); // close_notify: a write, so not to a peer that stopped reading
                }
                let _ = s.get_ref().shutdown(Shutdown::Both);
            }
            Transport::Pipe { .. } | Transport::Closed => {}
        }
    }
}

impl Read for Conn {
    /// Reads with the deadline: a socket timeout that fires early is retried until the
    /// deadline itself has passed, then the read fails with TimedOut.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flush()?;
        loop {
            let left = self.remaining()?;
            let timeout = self.next_timeout(left);
            let result = match &mut self.transport {
                Transport::Tcp(s) => {
                    if let Some(t) = timeout {
                        s.set_read_timeout(t)?;
                    }
                    s.read(buf)
                }
                Transport::Tls(s) => {
                    if let Some(t) = timeout {
                        s.get_ref().set_read_timeout(t)?;
                    }
                    s.read(buf)
                }
                Transport::Pipe { input, .. } => match sys::wait_readable(input.as_raw_fd(), left)? {
                    true => input.read(buf),
                    false => Err(io::ErrorKind::TimedOut.into()),
                },
                Transport::Closed => Ok(0),
            };
            match result {
                Err(e) if is_timeout(&e) => continue,
                other => return other,
            }
        }
    }
}

/// Writes all of `buf` within the socket's write timeout as a whole. The first write runs
/// under the timeout already set, so the usual whole write costs no extra system call; only
/// after a partial write is the timeout cut to the time left (and restored at the end), so a
/// peer that takes a byte now and then cannot stretch the wait.
fn write_within<W: Write>(out: &mut W, tcp: impl Fn(&W) -> &TcpStream, buf: &[u8]) -> io::Result<()> {
    let started = Instant::now();
    let mut limit = None;
    let mut written = 0;
    let mut result = Ok(());
    while written < buf.len() {
        if written > 0 {
            let full = match limit {
                Some(full) => full,
                None => match tcp(out).write_timeout() {
                    Ok(Some(full)) => *limit.insert(full),
                    Ok(None) => return out.write_all(&buf[written..]),
                    Err(e) => return Err(e),
                },
            };
            let left = full.saturating_sub(started.elapsed());
            if left.is_zero() {
                result = Err(io::ErrorKind::TimedOut.into());
                break;
            }
            if let Err(e) = tcp(out).set_write_timeout(Some(left)) {
                result = Err(e);
                break;
            }
        }
        match out.write(&buf[written..]) {
            Ok(0) => {
                result = Err(io::ErrorKind::WriteZero.into());
                break;
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    match limit {
        Some(full) => tcp(out).set_write_timeout(Some(full)).and(result),
        None => result,
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// Writes what is pending within the socket's write timeout. A failure is never taken for
    /// a read timeout (it is reported as a broken pipe), so a client that stops reading is cut
    /// off one write timeout after the write stalled, without a second wait for a 421.
    fn flush(&mut self) -> io::Result<()> {
        if self.write_failed {
            self.pending.clear();
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "an earlier write failed"));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = match &mut self.transport {
            Transport::Tcp(s) => write_within(s, |s| s, &self.pending),
            Transport::Tls(s) => write_within(s.as_mut(), |s| s.get_ref(), &self.pending),
            Transport::Pipe { output, .. } => output.write_all(&self.pending),
            Transport::Closed => Err(io::ErrorKind::NotConnected.into()),
        };
        self.pending.clear();
        result.map_err(|e| {
            self.write_failed = true;
            let why = if is_timeout(&e) { "the client stopped reading".to_string() } else { e.to_string() };
            io::Error::new(io::ErrorKind::BrokenPipe, format!("write: {why}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_timeout_is_set_once_per_session_and_never_past_the_deadline() {
        let mut conn = Conn::new(Transport::Closed);
        let secs = Duration::from_secs;
        let first = conn.next_timeout(Some(secs(300))).expect("set at the first read").expect("a timeout");
        assert!(first < secs(300) && first >= secs(280), "{first:?}");
        // The next commands' deadlines, each a moment later, then the message's longer one.
        for left in [secs(300) - Duration::from_millis(3), secs(299), secs(600), secs(300)] {
            assert_eq!(conn.next_timeout(Some(left)), None, "{left:?}");
        }
        // Less time left than is set (the set timeout ran out first): set to the time left.
        assert_eq!(conn.next_timeout(Some(Duration::from_millis(1500))), Some(Some(Duration::from_millis(1500))));
        // Far more (an hour's wait): set, so a silent client does not wake the thread often.
        assert!(conn.next_timeout(Some(secs(3600))).is_some());
        assert_eq!(conn.next_timeout(None), Some(None));
        assert_eq!(conn.next_timeout(None), None);
    }
}
