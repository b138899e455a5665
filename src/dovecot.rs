//! The client side of Dovecot's authentication protocol (version 1.x), so that users log in
//! on the submission ports with the passwords Dovecot checks (`auth_users =
//! dovecot:/run/dovecot/auth-client`).
//!
//! ```text
//!  server:  VERSION 1 2 / MECH PLAIN plaintext / MECH LOGIN plaintext / SPID .. / CUID .. /
//!           COOKIE .. / DONE                      (tab-separated fields, one line each)
//!  client:  VERSION 1 2 / CPID pid / AUTH id PLAIN service=smtp secured rip=.. resp=base64
//!  server:  OK id user=.. | FAIL id reason=.. [temp] | CONT id base64   (LOGIN: two CONTs)
//! ```
//! `Exchange` decides everything between two lines and is tested with byte strings; `verify`
//! is the socket around it, with a deadline on every read.
//!
//! And whether a user exists, asked of its userdb over the auth-userdb socket (`local_users =
//! dovecot:/run/dovecot/auth-userdb`): `USER id name service=smtp`, answered `USER id name
//! fields...`, `NOTFOUND id` or `FAIL id reason=...` (`userdb_answer`).

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::smtp::client::base64;

/// What Dovecot said of a user and password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The password is the user's (the name Dovecot knows the user by).
    Yes(String),
    No,
    /// Dovecot could not say (its passdb is down, a `temp` failure, a protocol error): try
    /// again later.
    Unavailable(String),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes, then read a line and give it to `Exchange::receive`.
    Send(Vec<u8>),
    /// Read a line and give it to `Exchange::receive`.
    Read,
    Done(Answer),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the server's handshake up to DONE.
    Handshake,
    /// AUTH sent; the next CONT (LOGIN) asks for the user, then the password.
    Waiting {
        sent_user: bool,
        sent_password: bool,
    },
    Done,
}

/// One login checked over one connection.
pub struct Exchange {
    state: State,
    user: String,
    password: Vec<u8>,
    client: Option<IpAddr>,
    pid: u32,
    mechanisms: Vec<String>,
    /// PLAIN or LOGIN, once chosen.
    login: bool,
}

/// The request ID this client uses; one request per connection.
const ID: &str = "1";

impl Exchange {
    pub fn new(user: &str, password: &[u8], client: Option<IpAddr>, pid: u32) -> Exchange {
        Exchange {
            state: State::Handshake,
            user: user.to_string(),
            password: password.to_vec(),
            client,
            pid,
            mechanisms: Vec::new(),
            login: false,
        }
    }

    /// The first step: the server speaks first.
    pub fn start(&self) -> Step {
        Step::Read
    }

    /// One line from the server, without its line end.
    pub fn receive(&mut self, line: &[u8]) -> Step {
        let Ok(line) = std::str::from_utf8(line) else { return self.done(unavailable("a line that is not UTF-8")) };
        let fields: Vec<&str> = line.split('\t').collect();
        match (self.state, fields[0]) {
            (State::Handshake, "VERSION") if fields.get(1) != Some(&"1") => {
                self.done(unavailable(&format!("protocol version {}, not 1", fields.get(1).unwrap_or(&"?"))))
            }
            (State::Handshake, "MECH") => {
                if let Some(name) = fields.get(1) {
                    self.mechanisms.push(name.to_ascii_uppercase());
                }
                Step::Read
            }
            (State::Handshake, "DONE") => self.request(),
            (State::Handshake, _) => Step::Read, // VERSION 1.x, SPID, CUID, COOKIE, and what later versions add
            (State::Waiting { .. }, "OK") if fields.get(1) == Some(&ID) => {
                let user = field(&fields, "user").unwrap_or(&self.user).to_string();
                self.done(Answer::Yes(user))
            }
            (State::Waiting { .. }, "FAIL") if fields.get(1) == Some(&ID) => {
                // `temp`: the passdb could not be asked, which says nothing about the password.
                if fields.iter().skip(2).any(|f| *f == "temp") {
                    let reason = field(&fields, "reason").unwrap_or("temporary failure");
                    return self.done(Answer::Unavailable(reason.to_string()));
                }
                self.done(Answer::No)
            }
            (State::Waiting { sent_user, sent_password }, "CONT") if fields.get(1) == Some(&ID) && self.login => {
                // LOGIN: the user, then the password, each asked for by a CONT.
                let (answer, next) = match (sent_user, sent_password) {
                    (false, _) => (self.user.as_bytes().to_vec(), State::Waiting { sent_user: true, sent_password }),
                    (true, false) => (self.password.clone(), State::Waiting { sent_user, sent_password: true }),
                    (true, true) => return self.done(unavailable("asked for more than a user and a password")),
                };
                self.state = next;
                Step::Send(format!("CONT\t{ID}\t{}\n", base64(&answer)).into_bytes())
            }
            (State::Waiting { .. }, _) => self.done(unavailable(&format!("unexpected `{}`", fields[0]))),
            (State::Done, _) => Step::Done(unavailable("a line after the answer")),
        }
    }

    /// The handshake is over: our VERSION and CPID, then the request, PLAIN when offered.
    fn request(&mut self) -> Step {
        let offers = |m: &str| self.mechanisms.iter().any(|x| x == m);
        let mut lines = format!("VERSION\t1\t2\nCPID\t{}\n", self.pid);
        // `secured`: postern offers AUTH only over TLS (or on loopback when allowed).
        let mut params = "service=smtp\tsecured".to_string();
        if let Some(ip) = self.client {
            params += &format!("\trip={ip}");
        }
        if offers("PLAIN") {
            // RFC 4616 §2: authzid (empty), NUL, authcid, NUL, password.
            let token = [b"\0", self.user.as_bytes(), b"\0", &self.password].concat();
            lines += &format!("AUTH\t{ID}\tPLAIN\t{params}\tresp={}\n", base64(&token));
        } else if offers("LOGIN") {
            self.login = true;
            lines += &format!("AUTH\t{ID}\tLOGIN\t{params}\n");
        } else {
            return self.done(unavailable("Dovecot offers neither PLAIN nor LOGIN"));
        }
        self.state = State::Waiting { sent_user: false, sent_password: false };
        Step::Send(lines.into_bytes())
    }

    fn done(&mut self, answer: Answer) -> Step {
        self.state = State::Done;
        Step::Done(answer)
    }
}

fn unavailable(why: &str) -> Answer {
    Answer::Unavailable(why.to_string())
}

/// The value of a `name=value` field.
fn field<'a>(fields: &[&'a str], name: &str) -> Option<&'a str> {
    fields.iter().skip(2).find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
}

/// What one line from the auth-userdb socket says of request 1: `Some(Ok(exists))`, or
/// `Some(Err(why))` for a failure; `None` for a line about something else (VERSION, SPID).
pub fn userdb_answer(line: &[u8]) -> Option<Result<bool, String>> {
    let line = String::from_utf8_lossy(line);
    let fields: Vec<&str> = line.split('\t').collect();
    match (fields[0], fields.get(1)) {
        ("USER", Some(&ID)) => Some(Ok(true)),
        ("NOTFOUND", Some(&ID)) => Some(Ok(false)),
        ("FAIL", Some(&ID)) => Some(Err(field(&fields, "reason").unwrap_or("the userdb failed").to_string())),
        ("VERSION", _) if fields.get(1) != Some(&"1") => Some(Err(format!("protocol version {line}, not 1"))),
        ("VERSION" | "SPID", _) => None,
        _ => Some(Err(format!("unexpected `{}`", line.chars().take(80).collect::<String>()))),
    }
}

/// Whether Dovecot's userdb knows `user`; `Err` when it cannot say now.
pub fn user_exists(socket: &Path, user: &str, timeout: Duration) -> Result<bool, String> {
    if user.is_empty() || user.contains(['\t', '\n', '\r', '\0']) {
        return Ok(false);
    }
    let mut socket = Socket::connect(socket, timeout)?;
    socket.send(format!("VERSION\t1\t0\nUSER\t{ID}\t{user}\tservice=smtp\n").as_bytes())?;
    loop {
        if let Some(answer) = userdb_answer(&socket.line()?) {
            return answer;
        }
    }
}

/// Checks `user` and `password` with the Dovecot at `socket`, within `timeout` for each
/// read and write. A user name or password with a tab, a line end or a NUL in it is never
/// sent: it is refused here.
pub fn verify(socket: &Path, user: &str, password: &[u8], client: Option<IpAddr>, timeout: Duration) -> Answer {
    if user.is_empty() || user.contains(['\t', '\n', '\r', '\0']) || password.contains(&0) {
        return Answer::No;
    }
    let mut exchange = Exchange::new(user, password, client, std::process::id());
    let asked = Socket::connect(socket, timeout).and_then(|mut socket| {
        let mut step = exchange.start();
        loop {
            match step {
                Step::Done(answer) => return Ok(answer),
                Step::Send(bytes) => socket.send(&bytes)?,
                Step::Read => {}
            }
            step = exchange.receive(&socket.line()?);
        }
    });
    asked.unwrap_or_else(Answer::Unavailable)
}

/// A line is at most this long; a server that sends more is not Dovecot.
const MAX_LINE: u64 = 64 * 1024;

/// A connection to one of Dovecot's sockets: lines out and lines in, each read and write
/// within the timeout; every failure said with the socket's path.
struct Socket<'a> {
    path: &'a Path,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl<'a> Socket<'a> {
    fn connect(path: &'a Path, timeout: Duration) -> Result<Socket<'a>, String> {
        let failed = |e: std::io::Error| format!("{}: {e}", path.display());
        let stream = UnixStream::connect(path).map_err(failed)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(failed)?;
        let writer = stream.try_clone().map_err(failed)?;
        Ok(Socket { path, writer, reader: BufReader::new(stream) })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer.write_all(bytes).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// The next line, without its line end.
    fn line(&mut self) -> Result<Vec<u8>, String> {
        let mut line = Vec::new();
        match std::io::Read::take(&mut self.reader, MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => Err(format!("{}: closed", self.path.display())),
            Ok(_) if line.last() != Some(&b'\n') => Err(format!("{}: a line too long", self.path.display())),
            Ok(_) => {
                line.pop();
                Ok(line)
            }
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREETING: &str = "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t12\nCUID\t3\n\
                            COOKIE\t0123abcd\nDONE\n";

    /// Plays the server's lines; returns what the client wrote and its answer.
    fn play(exchange: &mut Exchange, server: &str) -> (String, Answer) {
        let mut wrote = String::new();
        let mut lines = server.lines();
        let mut step = exchange.start();
        loop {
            match step {
                Step::Done(answer) => return (wrote, answer),
                Step::Send(bytes) => wrote += &String::from_utf8(bytes).unwrap(),
                Step::Read => {}
            }
            let line = lines.next().expect("the client waits for a line the script lacks");
            step = exchange.receive(line.as_bytes());
        }
    }

    #[test]
    fn plain_yes_and_no() {
        let ip = Some("192.0.2.7".parse().unwrap());
        let mut e = Exchange::new("alice@a.test", b"pw", ip, 42);
        let (wrote, answer) = play(&mut e, &format!("{GREETING}OK\t1\tuser=alice@a.test\n"));
        assert_eq!(
            wrote,
            "VERSION\t1\t2\nCPID\t42\nAUTH\t1\tPLAIN\tservice=smtp\tsecured\trip=192.0.2.7\tresp=AGFsaWNlQGEudGVzdABwdw==\n"
        );
        assert_eq!(answer, Answer::Yes("alice@a.test".into()));
        let mut e = Exchange::new("alice@a.test", b"wrong", None, 42);
        let (_, answer) = play(&mut e, &format!("{GREETING}FAIL\t1\tuser=alice@a.test\n"));
        assert_eq!(answer, Answer::No);
        let mut e = Exchange::new("alice", b"pw", None, 42);
        let (_, answer) = play(&mut e, &format!("{GREETING}FAIL\t1\treason=passdb down\ttemp\n"));
        assert_eq!(answer, Answer::Unavailable("passdb down".into()));
    }

    #[test]
    fn login_when_plain_is_not_offered() {
        let greeting = "VERSION\t1\t2\nMECH\tLOGIN\tplaintext\nDONE\n";
        let server = format!("{greeting}CONT\t1\tVXNlcm5hbWU6\nCONT\t1\tUGFzc3dvcmQ6\nOK\t1\tuser=bob\n");
        let mut e = Exchange::new("bob", b"secret", None, 7);
        let (wrote, answer) = play(&mut e, &server);
        assert!(
            wrote.ends_with("AUTH\t1\tLOGIN\tservice=smtp\tsecured\nCONT\t1\tYm9i\nCONT\t1\tc2VjcmV0\n"),
            "{wrote}"
        );
        assert_eq!(answer, Answer::Yes("bob".into()));
    }

    #[test]
    fn anything_else_is_unavailable_never_yes() {
        for server in [
            "VERSION\t2\t0\n",
            "VERSION\t1\t2\nMECH\tCRAM-MD5\nDONE\n",
            "VERSION\t1\t2\nMECH\tPLAIN\nDONE\nOK\t2\n",
            "VERSION\t1\t2\nMECH\tPLAIN\nDONE\nCONT\t1\tx\n",
            "VERSION\t1\t2\nMECH\tPLAIN\nDONE\nBOGUS\n",
        ] {
            let mut e = Exchange::new("alice", b"pw", None, 1);
            let (_, answer) = play(&mut e, server);
            assert!(matches!(answer, Answer::Unavailable(_)), "{server:?}: {answer:?}");
        }
        let mut e = Exchange::new("alice", b"pw", None, 1);
        assert!(matches!(e.receive(b"\xff\xfe"), Step::Done(Answer::Unavailable(_))));
    }

    #[test]
    fn userdb_answers() {
        assert_eq!(userdb_answer(b"VERSION\t1\t1"), None);
        assert_eq!(userdb_answer(b"SPID\t6097"), None);
        assert_eq!(userdb_answer(b"USER\t1\talice@a.example\tuid=105\thome=/m/alice"), Some(Ok(true)));
        assert_eq!(userdb_answer(b"NOTFOUND\t1"), Some(Ok(false)));
        assert_eq!(userdb_answer(b"FAIL\t1\treason=ldap down"), Some(Err("ldap down".into())));
        assert!(matches!(userdb_answer(b"VERSION\t2\t0"), Some(Err(_))));
        assert!(matches!(userdb_answer(b"USER\t2\tsomeone"), Some(Err(_))), "not our request");
        assert!(matches!(userdb_answer(b"\xff"), Some(Err(_))));
        let nowhere = Path::new("/nonexistent/auth-userdb");
        assert_eq!(user_exists(nowhere, "a\tb", Duration::from_secs(1)), Ok(false));
        assert!(user_exists(nowhere, "a", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn names_that_would_break_a_line_are_refused_before_connecting() {
        let nowhere = Path::new("/nonexistent/auth-client");
        assert_eq!(verify(nowhere, "a\tb", b"pw", None, Duration::from_secs(1)), Answer::No);
        assert_eq!(verify(nowhere, "a", b"p\0w", None, Duration::from_secs(1)), Answer::No);
        assert!(matches!(verify(nowhere, "a", b"pw", None, Duration::from_secs(1)), Answer::Unavailable(_)));
    }
}
