//! The client side of SMTP (RFC 5321 §3-4, RFC 2920, RFC 3207, RFC 4954), and of LMTP (RFC
//! 2033) with the same two state machines, with no I/O: they say what to write and when to
//! read, and take each reply. LMTP differs in two places: LHLO where SMTP says EHLO, with no
//! HELO to fall back on (§4.1), and one reply after the final dot for each recipient
//! accepted, in the order of the RCPTs (§4.2).
//!
//! ```text
//!  Opening:  (connect) -> read 220 -> EHLO --250--> [STARTTLS --220--> (TLS handshake) -> EHLO]
//!                                       \--else--> HELO --250--/      -> [AUTH --235-->] -> ready
//!
//!  Transaction (one message, on a ready session):
//!            [RSET --250-->] MAIL, RCPT..., DATA   (one write with PIPELINING, else one by one)
//!            -> 354 -> the text, dot-stuffed, "." -> the final reply -> per-recipient results
//! ```
//! A thin loop (`crate::client`) does the reads and writes, the TLS handshake and the waits;
//! everything decided between two replies is here and is tested with byte strings.

use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::{BodyType, Command, MailParams};
use crate::smtp::reply::{Reply, ReplyError};

/// What the server offered in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// The SIZE limit; `Some(0)` means offered without a limit (RFC 1870 §4).
    pub size: Option<u64>,
    pub auth: Vec<String>,
    /// The session is LMTP's (RFC 2033): one reply per accepted recipient after the dot.
    pub lmtp: bool,
}

impl Extensions {
    /// Every line after the first names one extension and its parameters.
    pub fn parse(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines().iter().skip(1) {
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

/// Why a session or a transaction cannot go on, as the protocol sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpError {
    /// The server refused where the session cannot go on (greeting, HELO, RSET, MAIL, DATA).
    Refused(Reply),
    /// The server's bytes are not SMTP.
    Protocol(ReplyError),
    /// The server sent bytes after its 220 to STARTTLS, before the handshake (RFC 3207 §4.2).
    Injected,
    /// TLS is required and the server does not offer it, or refused STARTTLS.
    TlsRequired(Option<Reply>),
    /// AUTH is asked for but offers none of PLAIN and LOGIN.
    NoAuthMechanism,
    /// The message is over the server's declared SIZE (RFC 1870 §6).
    TooBig { size: u64, limit: u64 },
    /// An SMTPUTF8 message for a server without SMTPUTF8 (RFC 6531 §3.2).
    NeedsSmtputf8,
    /// A reply arrived that the machine did not ask for.
    Unexpected,
}

/// How long the loop waits for the next reply (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Greeting, EHLO, MAIL, RCPT, RSET, DATA, QUIT: the command timeout.
    Command,
    /// The reply after the final dot (§4.5.3.2.6: 10 minutes).
    DataDone,
}

/// What the opening asks of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenStep {
    /// Write these bytes, then read one reply and give it to `Opening::receive`.
    Send(Vec<u8>),
    /// Read one reply (the greeting) and give it to `receive`.
    Read,
    /// Start TLS on the connection, then call `Opening::tls_started`.
    StartTls,
    /// Ready for transactions.
    Ready,
    Failed(SmtpError),
}

/// Whether TLS must be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsWant {
    /// STARTTLS when offered; plaintext when not, or when it is refused.
    May,
    /// STARTTLS or nothing.
    Required,
    /// The connection is already encrypted, or TLS is not to be tried.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenState {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Handshake,
    AuthPlain,
    AuthLogin(u8),
    Ready,
    Failed,
}

/// Greeting, hello, STARTTLS and AUTH, until the session is ready.
pub struct Opening {
    helo: String,
    tls: TlsWant,
    credentials: Option<(String, String)>,
    state: OpenState,
    extensions: Extensions,
    encrypted: bool,
    next: OpenStep,
    lmtp: bool,
}

impl Opening {
    /// A new opening; `credentials` are sent only once TLS is up (RFC 4954 §4 leaves it to
    /// policy; sending a password in the clear is never right for a relay).
    pub fn new(helo: &str, tls: TlsWant, credentials: Option<(String, String)>) -> Opening {
        Opening {
            helo: helo.to_string(),
            tls,
            credentials,
            state: OpenState::Greeting,
            extensions: Extensions::default(),
            encrypted: false,
            next: OpenStep::Read,
            lmtp: false,
        }
    }

    /// An LMTP opening (RFC 2033 §4.1): the greeting, then LHLO; no TLS, no AUTH (a local
    /// delivery agent on a socket of this host's).
    pub fn lmtp(helo: &str) -> Opening {
        Opening { lmtp: true, ..Opening::new(helo, TlsWant::Never, None) }
    }

    /// What to do now.
    pub fn step(&self) -> OpenStep {
        self.next.clone()
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Whether the session went through STARTTLS.
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }

    fn go(&mut self, state: OpenState, next: OpenStep) {
        self.state = state;
        self.next = next;
    }

    fn fail(&mut self, e: SmtpError) {
        self.go(OpenState::Failed, OpenStep::Failed(e));
    }

    fn ehlo(&mut self) {
        let line = match self.lmtp {
            true => format!("LHLO {}\r\n", self.helo).into_bytes(),
            false => Command::Ehlo(self.helo.clone()).to_line(),
        };
        self.go(OpenState::Ehlo, OpenStep::Send(line));
    }

    /// The TLS handshake is done: start over with EHLO (RFC 3207 §4.2).
    pub fn tls_started(&mut self) {
        if self.state == OpenState::Handshake {
            self.encrypted = true;
            self.extensions = Extensions::default();
            self.ehlo();
        }
    }

    /// The 220 to STARTTLS came with more bytes behind it, which were sent before TLS and
    /// must never be read as if they came after (RFC 3207 §4.2).
    pub fn injected(&mut self) {
        self.fail(SmtpError::Injected);
    }

    pub fn receive(&mut self, reply: Reply) {
        match self.state {
            OpenState::Greeting if reply.code() == 220 => self.ehlo(),
            // A 554 greeting (§3.1) or anything else: this server will not talk; try another.
            OpenState::Greeting => self.fail(SmtpError::Refused(reply)),
            OpenState::Ehlo if reply.code() == 250 => {
                self.extensions = Extensions { lmtp: self.lmtp, ..Extensions::parse(&reply) };
                self.after_hello();
            }
            // RFC 2033 §4.1: LMTP has no HELO.
            OpenState::Ehlo if self.lmtp => self.fail(SmtpError::Refused(reply)),
            // §4.1.4: a server that does not know EHLO gets HELO.
            OpenState::Ehlo => {
                let line = Command::Helo(self.helo.clone()).to_line();
                self.go(OpenState::Helo, OpenStep::Send(line));
            }
            OpenState::Helo if reply.code() == 250 => {
                self.extensions = Extensions::default();
                self.after_hello();
            }
            OpenState::Helo => self.fail(SmtpError::Refused(reply)),
            OpenState::StartTls if reply.code() == 220 => self.go(OpenState::Handshake, OpenStep::StartTls),
            OpenState::StartTls if self.tls == TlsWant::Required => self.fail(SmtpError::TlsRequired(Some(reply))),
            OpenState::StartTls => {
                self.tls = TlsWant::Never; // refused: carry on in plaintext, as offered
                self.after_hello();
            }
            OpenState::AuthPlain | OpenState::AuthLogin(2) if reply.code() == 235 => {
                self.go(OpenState::Ready, OpenStep::Ready)
            }
            OpenState::AuthLogin(n) if n < 2 && reply.code() == 334 => {
                let Some((user, password)) = &self.credentials else { return self.fail(SmtpError::Unexpected) };
                let answer = if n == 0 { user } else { password };
                let line = format!("{}\r\n", base64(answer.as_bytes())).into_bytes();
                self.go(OpenState::AuthLogin(n + 1), OpenStep::Send(line));
            }
            OpenState::AuthPlain | OpenState::AuthLogin(_) => self.fail(SmtpError::Refused(reply)),
            OpenState::Handshake | OpenState::Ready | OpenState::Failed => self.fail(SmtpError::Unexpected),
        }
    }

    fn after_hello(&mut self) {
        if !self.encrypted && self.tls != TlsWant::Never {
            if self.extensions.starttls {
                return self.go(OpenState::StartTls, OpenStep::Send(Command::StartTls.to_line()));
            }
            if self.tls == TlsWant::Required {
                return self.fail(SmtpError::TlsRequired(None));
            }
        }
        let Some((user, password)) = &self.credentials else { return self.go(OpenState::Ready, OpenStep::Ready) };
        if !self.encrypted {
            // Never in the clear: a relayhost that is not reached over TLS gets no password.
            return self.fail(SmtpError::TlsRequired(None));
        }
        let offers = |m: &str| self.extensions.auth.iter().any(|a| a == m);
        if offers("PLAIN") {
            // RFC 4616 §2: authzid (empty), NUL, authcid, NUL, password.
            let token = base64(format!("\0{user}\0{password}").as_bytes());
            let line = format!("AUTH PLAIN {token}\r\n").into_bytes();
            self.go(OpenState::AuthPlain, OpenStep::Send(line));
        } else if offers("LOGIN") {
            self.go(OpenState::AuthLogin(0), OpenStep::Send(b"AUTH LOGIN\r\n".to_vec()));
        } else {
            self.fail(SmtpError::NoAuthMechanism);
        }
    }
}

/// One message for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: ReversePath,
    pub recipients: Vec<ForwardPath>,
    pub size: u64,
    pub body: BodyType,
    pub smtputf8: bool,
}

/// What one recipient's copy came to: the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientResult {
    /// Accepted: the 250 after the final dot.
    Sent(Reply),
    /// Refused: the RCPT reply, or the reply after the dot.
    Failed(Reply),
}

/// What the transaction asks of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxStep {
    /// Write these bytes; then ask again.
    Send(Vec<u8>),
    /// Read one reply within the wait and give it to `Transaction::receive`.
    Read(Wait),
    /// Write the message text through a `DotStuffer`, its end marker included; only the end
    /// marker when `empty`. Then ask again.
    Text { empty: bool },
    /// The transaction is over: per-recipient results in the order given, or a failure of
    /// the whole transaction.
    Done(Result<Vec<RecipientResult>, SmtpError>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TxState {
    Reset,
    ResetReply,
    Envelope,
    EnvelopeReplies,
    Text { empty: bool },
    FinalReply { empty: bool },
    Done(Result<Vec<RecipientResult>, SmtpError>),
}

/// MAIL, RCPT, DATA and the text of one message, with the replies that decide each recipient.
pub struct Transaction {
    state: TxState,
    pipelining: bool,
    /// MAIL, one RCPT per recipient, DATA.
    commands: Vec<Vec<u8>>,
    sent: usize,
    replies: Vec<Reply>,
    /// LMTP: the replies after the dot so far, one per accepted recipient.
    finals: Vec<Reply>,
    lmtp: bool,
}

impl Transaction {
    /// A transaction on a session that offered `ext`; `reset` sends RSET first (a session
    /// that carried a message before). Limits the server declared are checked here, before
    /// anything is sent.
    pub fn new(ext: &Extensions, envelope: &Envelope, reset: bool) -> Transaction {
        let params = MailParams {
            size: ext.size.map(|_| envelope.size),
            body: if ext.eight_bit_mime { envelope.body } else { BodyType::SevenBit },
            smtputf8: envelope.smtputf8,
        };
        let mut commands = vec![Command::Mail { from: envelope.from.clone(), params }.to_line()];
        commands.extend(envelope.recipients.iter().map(|to| Command::Rcpt { to: to.clone() }.to_line()));
        commands.push(Command::Data.to_line());
        let state = match ext.size {
            Some(limit) if limit > 0 && envelope.size > limit => {
                TxState::Done(Err(SmtpError::TooBig { size: envelope.size, limit }))
            }
            _ if envelope.smtputf8 && !ext.smtputf8 => TxState::Done(Err(SmtpError::NeedsSmtputf8)),
            _ if reset => TxState::Reset,
            _ => TxState::Envelope,
        };
        let (pipelining, lmtp) = (ext.pipelining, ext.lmtp);
        Transaction { state, pipelining, commands, sent: 0, replies: Vec::new(), finals: Vec::new(), lmtp }
    }

    fn recipients(&self) -> usize {
        self.commands.len() - 2
    }

    /// What to do now; each `Send` and `Text` is done once, so ask again after it.
    pub fn step(&mut self) -> TxStep {
        match &self.state {
            TxState::Reset => {
                self.state = TxState::ResetReply;
                TxStep::Send(Command::Rset.to_line())
            }
            TxState::ResetReply | TxState::EnvelopeReplies if self.replies.len() < self.sent => {
                TxStep::Read(Wait::Command)
            }
            TxState::ResetReply => TxStep::Read(Wait::Command),
            TxState::Envelope if self.pipelining => {
                // RFC 2920 §3.1: the whole group in one write; the replies come in order.
                self.sent = self.commands.len();
                self.state = TxState::EnvelopeReplies;
                TxStep::Send(self.commands.concat())
            }
            TxState::Envelope => {
                let accepted = self.replies.iter().skip(1).any(Reply::is_positive);
                if self.sent == self.commands.len() - 1 && !accepted {
                    // No recipient accepted: DATA is not sent (§3.3).
                    self.evaluate();
                    return self.step();
                }
                self.state = TxState::EnvelopeReplies;
                self.sent += 1;
                TxStep::Send(self.commands[self.sent - 1].clone())
            }
            TxState::EnvelopeReplies => {
                if self.sent < self.commands.len() {
                    self.state = TxState::Envelope;
                } else {
                    self.evaluate();
                }
                self.step()
            }
            TxState::Text { empty } => {
                let empty = *empty;
                self.state = TxState::FinalReply { empty };
                TxStep::Text { empty }
            }
            TxState::FinalReply { .. } => TxStep::Read(Wait::DataDone),
            TxState::Done(result) => TxStep::Done(result.clone()),
        }
    }

    pub fn receive(&mut self, reply: Reply) {
        match &self.state {
            TxState::ResetReply if reply.code() == 250 => self.state = TxState::Envelope,
            TxState::ResetReply => self.state = TxState::Done(Err(SmtpError::Refused(reply))),
            TxState::EnvelopeReplies | TxState::Envelope => {
                let mail_refused = self.replies.is_empty() && !reply.is_positive();
                self.replies.push(reply);
                if mail_refused && !self.pipelining {
                    self.sent = self.commands.len(); // nothing more to send after a refused MAIL
                    self.evaluate();
                }
            }
            TxState::FinalReply { empty: true } => {
                // The server is back in command state; what it said to an empty text is moot.
                self.state = TxState::Done(self.refused_envelope());
            }
            TxState::FinalReply { empty: false } if self.lmtp => {
                // RFC 2033 §4.2: one reply for each accepted recipient, in RCPT order.
                self.finals.push(reply);
                let rcpts = &self.replies[1..=self.recipients()];
                if self.finals.len() < rcpts.iter().filter(|r| r.is_positive()).count() {
                    return;
                }
                let mut finals = self.finals.iter();
                let results = rcpts
                    .iter()
                    .map(|rcpt| match rcpt.is_positive().then(|| finals.next()).flatten() {
                        Some(r) if r.is_positive() => RecipientResult::Sent(r.clone()),
                        Some(r) => RecipientResult::Failed(r.clone()),
                        None => RecipientResult::Failed(rcpt.clone()),
                    })
                    .collect();
                self.state = TxState::Done(Ok(results));
            }
            TxState::FinalReply { empty: false } => {
                let results = self.replies[1..=self.recipients()]
                    .iter()
                    .map(|rcpt| match (rcpt.is_positive(), reply.is_positive()) {
                        (true, true) => RecipientResult::Sent(reply.clone()),
                        (true, false) => RecipientResult::Failed(reply.clone()),
                        (false, _) => RecipientResult::Failed(rcpt.clone()),
                    })
                    .collect();
                self.state = TxState::Done(Ok(results));
            }
            TxState::Reset | TxState::Text { .. } | TxState::Done(_) => {
                self.state = TxState::Done(Err(SmtpError::Unexpected));
            }
        }
    }

    /// All envelope replies are in (or sending stopped): open the text, or end here.
    fn evaluate(&mut self) {
        let n = self.recipients();
        let mail_ok = self.replies.first().is_some_and(Reply::is_positive);
        let accepted = self.replies.iter().skip(1).take(n).filter(|r| r.is_positive()).count();
        let data = self.replies.get(n + 1);
        let data_open = data.is_some_and(|r| r.code() == 354);
        self.state = if !mail_ok || accepted == 0 {
            // RFC 2920 §3.1: a server that opened DATA anyway gets an empty text, so that it
            // is back in command state; nothing is delivered without an accepted recipient.
            if data_open { TxState::Text { empty: true } } else { TxState::Done(self.refused_envelope()) }
        } else if data_open {
            TxState::Text { empty: false }
        } else {
            let refusal = data.cloned().map_or(SmtpError::Unexpected, SmtpError::Refused);
            TxState::Done(Err(refusal))
        };
    }

    /// A refused MAIL fails the whole transaction; refused recipients fail one by one.
    fn refused_envelope(&self) -> Result<Vec<RecipientResult>, SmtpError> {
        match self.replies.first() {
            Some(mail) if !mail.is_positive() => Err(SmtpError::Refused(mail.clone())),
            None => Err(SmtpError::Unexpected),
            Some(_) => {
                let rcpts = self.replies.iter().skip(1).take(self.recipients());
                let results: Vec<RecipientResult> = rcpts.cloned().map(RecipientResult::Failed).collect();
                if results.len() == self.recipients() { Ok(results) } else { Err(SmtpError::Unexpected) }
            }
        }
    }
}

/// Standard base64 (RFC 4648 §4), for AUTH PLAIN and LOGIN.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::line::DotStuffer;
    use crate::smtp::reply::{Parsed, parse_reply};

    /// Plays a server script: its bytes are fed to the parser in pieces of `chunk` octets,
    /// so every reply is seen first as each of its prefixes. Returns what the client wrote.
    struct Wire {
        server: Vec<u8>,
        at: usize,
        buffered: Vec<u8>,
        chunk: usize,
        client: Vec<u8>,
    }

    impl Wire {
        fn new(server: &str, chunk: usize) -> Wire {
            Wire { server: server.as_bytes().to_vec(), at: 0, buffered: Vec::new(), chunk, client: Vec::new() }
        }

        fn reply(&mut self) -> Reply {
            loop {
                match parse_reply(&self.buffered) {
                    Parsed::Reply(r, n) => {
                        self.buffered.drain(..n);
                        return r;
                    }
                    Parsed::Partial => {
                        assert!(self.at < self.server.len(), "the client waits for a reply the script lacks");
                        let end = (self.at + self.chunk).min(self.server.len());
                        self.buffered.extend_from_slice(&self.server[self.at..end]);
                        self.at = end;
                    }
                    Parsed::Error(e) => panic!("{e}"),
                }
            }
        }

        fn open(&mut self, opening: &mut Opening) -> OpenStep {
            loop {
                match opening.step() {
                    OpenStep::Send(bytes) => {
                        self.client.extend_from_slice(&bytes);
                        let r = self.reply();
                        opening.receive(r);
                    }
                    OpenStep::Read => {
                        let r = self.reply();
                        opening.receive(r);
                    }
                    OpenStep::StartTls => {
                        self.client.extend_from_slice(b"<TLS>");
                        opening.tls_started();
                    }
                    done => return done,
                }
            }
        }

        fn transact(&mut self, tx: &mut Transaction) -> Result<Vec<RecipientResult>, SmtpError> {
            loop {
                match tx.step() {
                    TxStep::Send(bytes) => self.client.extend_from_slice(&bytes),
                    TxStep::Read(_) => {
                        let r = self.reply();
                        tx.receive(r);
                    }
                    TxStep::Text { empty } => {
                        let mut s = DotStuffer::default();
                        if !empty {
                            s.push(b"Subject: t\r\n\r\n.hi\r\n", &mut self.client);
                        }
                        s.finish(&mut self.client);
                    }
                    TxStep::Done(result) => return result,
                }
            }
        }

        fn client_text(&self) -> String {
            String::from_utf8(self.client.clone()).unwrap()
        }
    }

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope {
            from: ReversePath::parse(b"alice@a.test").unwrap(),
            recipients: rcpts.iter().map(|r| ForwardPath::parse(r.as_bytes()).unwrap()).collect(),
            size: 20,
            body: BodyType::EightBitMime,
            smtputf8: false,
        }
    }

    fn codes(results: &[RecipientResult]) -> Vec<String> {
        results
            .iter()
            .map(|r| match r {
                RecipientResult::Sent(r) => format!("sent {}", r.code()),
                RecipientResult::Failed(r) => format!("failed {}", r.code()),
            })
            .collect()
    }

    /// Every chunk size from one octet up: each step sees every prefix of every reply.
    fn every_split(server: &str, mut check: impl FnMut(&mut Wire)) {
        for chunk in 1..=server.len().max(1) {
            let mut wire = Wire::new(server, chunk);
            check(&mut wire);
            assert_eq!(wire.at, wire.server.len(), "chunk {chunk}: the client read the whole script");
        }
    }

    const GREETING_AND_EHLO: &str =
        "220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 1000\r\n";

    #[test]
    fn opening_with_ehlo() {
        every_split(GREETING_AND_EHLO, |wire| {
            let mut opening = Opening::new("client.test", TlsWant::May, None);
            assert_eq!(wire.open(&mut opening), OpenStep::Ready);
            assert_eq!(wire.client_text(), "EHLO client.test\r\n");
            let ext = opening.extensions();
            assert!(ext.pipelining && ext.eight_bit_mime && ext.size == Some(1000) && !ext.starttls);
        });
    }

    #[test]
    fn opening_falls_back_to_helo_and_stops_at_a_554_greeting() {
        every_split("220 old.test\r\n502 5.5.1 what\r\n250 old.test\r\n", |wire| {
            let mut opening = Opening::new("c.test", TlsWant::May, None);
            assert_eq!(wire.open(&mut opening), OpenStep::Ready);
            assert_eq!(wire.client_text(), "EHLO c.test\r\nHELO c.test\r\n");
            assert_eq!(opening.extensions(), &Extensions::default());
        });
        every_split("554 5.7.1 go away\r\n", |wire| {
            let mut opening = Opening::new("c.test", TlsWant::May, None);
            let OpenStep::Failed(SmtpError::Refused(r)) = wire.open(&mut opening) else { panic!() };
            assert_eq!(r.summary(), "554 5.7.1 go away");
            assert_eq!(wire.client_text(), "", "nothing is said to a server that refused");
        });
    }

    #[test]
    fn starttls_then_ehlo_again_then_auth() {
        let script =
            "220 mx\r\n250-mx\r\n250 STARTTLS\r\n220 2.0.0 go\r\n250-mx\r\n250 AUTH LOGIN PLAIN\r\n235 2.7.0 ok\r\n";
        every_split(script, |wire| {
            let mut opening = Opening::new("c", TlsWant::Required, Some(("user".into(), "pass".into())));
            assert_eq!(wire.open(&mut opening), OpenStep::Ready);
            assert_eq!(wire.client_text(), "EHLO c\r\nSTARTTLS\r\n<TLS>EHLO c\r\nAUTH PLAIN AHVzZXIAcGFzcw==\r\n");
            assert!(opening.encrypted());
        });
        let script = "220 mx\r\n250-mx\r\n250 STARTTLS\r\n220 go\r\n250-mx\r\n250 AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 ok\r\n";
        every_split(script, |wire| {
            let mut opening = Opening::new("c", TlsWant::May, Some(("user".into(), "pass".into())));
            assert_eq!(wire.open(&mut opening), OpenStep::Ready);
            assert!(wire.client_text().ends_with("AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\n"), "{}", wire.client_text());
        });
    }

    #[test]
    fn tls_refusals_follow_the_policy() {
        let no_starttls = "220 mx\r\n250 mx\r\n";
        let mut opening = Opening::new("c", TlsWant::Required, None);
        assert_eq!(Wire::new(no_starttls, 4).open(&mut opening), OpenStep::Failed(SmtpError::TlsRequired(None)));
        let refused = "220 mx\r\n250-mx\r\n250 STARTTLS\r\n454 4.7.0 not now\r\n";
        let mut opening = Opening::new("c", TlsWant::May, None);
        assert_eq!(Wire::new(refused, 3).open(&mut opening), OpenStep::Ready, "may: plaintext after a refusal");
        let mut opening = Opening::new("c", TlsWant::Required, None);
        assert!(matches!(Wire::new(refused, 3).open(&mut opening), OpenStep::Failed(SmtpError::TlsRequired(Some(_)))));
        let mut opening = Opening::new("c", TlsWant::May, Some(("u".into(), "p".into())));
        let mut wire = Wire::new(no_starttls, 5);
        assert_eq!(wire.open(&mut opening), OpenStep::Failed(SmtpError::TlsRequired(None)));
        assert!(!wire.client_text().contains("AUTH"), "no password in the clear");
        let mut opening = Opening::new("c", TlsWant::May, None);
        let mut wire = Wire::new("220 mx\r\n250-mx\r\n250 STARTTLS\r\n220 go\r\n", 2);
        for _ in 0..3 {
            let r = wire.reply();
            opening.receive(r);
        }
        assert_eq!(opening.step(), OpenStep::StartTls);
        opening.injected();
        assert_eq!(opening.step(), OpenStep::Failed(SmtpError::Injected));
    }

    fn pipelining() -> Extensions {
        Extensions { pipelining: true, eight_bit_mime: true, size: Some(0), ..Extensions::default() }
    }

    #[test]
    fn a_pipelined_transaction_writes_the_envelope_at_once() {
        let script = "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no bob\r\n354 go\r\n250 2.0.0 queued\r\n";
        every_split(script, |wire| {
            let mut tx = Transaction::new(&pipelining(), &envelope(&["carol@b.test", "bob@b.test"]), false);
            let results = wire.transact(&mut tx).unwrap();
            assert_eq!(codes(&results), ["sent 250", "failed 550"]);
            assert_eq!(
                wire.client_text(),
                "MAIL FROM:<alice@a.test> SIZE=20 BODY=8BITMIME\r\nRCPT TO:<carol@b.test>\r\nRCPT TO:<bob@b.test>\r\n\
                 DATA\r\nSubject: t\r\n\r\n..hi\r\n.\r\n"
            );
        });
    }

    #[test]
    fn one_by_one_stops_after_a_refused_mail_and_skips_data_without_recipients() {
        let plain = Extensions::default();
        every_split("550 5.7.1 not you\r\n", |wire| {
            let mut tx = Transaction::new(&plain, &envelope(&["b@b.test"]), false);
            let Err(SmtpError::Refused(r)) = wire.transact(&mut tx) else { panic!() };
            assert_eq!(r.code(), 550);
            assert_eq!(wire.client_text(), "MAIL FROM:<alice@a.test>\r\n");
        });
        every_split("250 ok\r\n550 no\r\n450 later\r\n", |wire| {
            let mut tx = Transaction::new(&plain, &envelope(&["b@b.test", "c@b.test"]), false);
            assert_eq!(codes(&wire.transact(&mut tx).unwrap()), ["failed 550", "failed 450"]);
            assert!(!wire.client_text().contains("DATA"), "{}", wire.client_text());
        });
    }

    #[test]
    fn a_server_that_opens_data_without_recipients_gets_an_empty_text() {
        every_split("250 ok\r\n550 no\r\n354 go\r\n554 5.5.1 no valid recipients\r\n", |wire| {
            let mut tx = Transaction::new(&pipelining(), &envelope(&["b@b.test"]), false);
            assert_eq!(codes(&wire.transact(&mut tx).unwrap()), ["failed 550"]);
            assert!(wire.client_text().ends_with("DATA\r\n.\r\n"), "only the end marker");
        });
    }

    #[test]
    fn rset_first_and_refusals_after_the_dot() {
        every_split("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n452 4.3.1 full\r\n", |wire| {
            let mut tx = Transaction::new(&pipelining(), &envelope(&["b@b.test"]), true);
            assert_eq!(codes(&wire.transact(&mut tx).unwrap()), ["failed 452"]);
            assert!(wire.client_text().starts_with("RSET\r\nMAIL FROM:"));
        });
        let mut tx = Transaction::new(&pipelining(), &envelope(&["b@b.test"]), true);
        assert!(matches!(Wire::new("421 bye\r\n", 3).transact(&mut tx), Err(SmtpError::Refused(_))));
        every_split("250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n", |wire| {
            let mut tx = Transaction::new(&pipelining(), &envelope(&["b@b.test"]), false);
            let Err(SmtpError::Refused(r)) = wire.transact(&mut tx) else { panic!() };
            assert_eq!(r.code(), 451, "a refused DATA fails the transaction");
        });
    }

    #[test]
    fn declared_limits_are_checked_before_anything_is_sent() {
        let small = Extensions { size: Some(10), ..pipelining() };
        let mut tx = Transaction::new(&small, &envelope(&["b@b.test"]), false);
        assert_eq!(tx.step(), TxStep::Done(Err(SmtpError::TooBig { size: 20, limit: 10 })));
        let utf8 = Envelope { smtputf8: true, ..envelope(&["b@b.test"]) };
        let mut tx = Transaction::new(&pipelining(), &utf8, false);
        assert_eq!(tx.step(), TxStep::Done(Err(SmtpError::NeedsSmtputf8)));
        let mut tx = Transaction::new(&Extensions::default(), &utf8, false);
        assert_eq!(tx.step(), TxStep::Done(Err(SmtpError::NeedsSmtputf8)));
        let seven = Envelope { body: BodyType::EightBitMime, ..envelope(&["b@b.test"]) };
        let mut tx = Transaction::new(&Extensions::default(), &seven, false);
        assert_eq!(tx.step(), TxStep::Send(b"MAIL FROM:<alice@a.test>\r\n".to_vec()), "no BODY= unless offered");
    }

    #[test]
    fn lmtp_says_lhlo_and_reads_a_reply_for_each_accepted_recipient() {
        let script = "220 dovecot LMTP ready\r\n250-host\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n\
                      250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n\
                      250 2.0.0 <a@x.test> saved\r\n452 4.2.2 <c@x.test> over quota\r\n";
        every_split(script, |wire| {
            let mut opening = Opening::lmtp("mx.test");
            assert_eq!(wire.open(&mut opening), OpenStep::Ready);
            assert!(opening.extensions().lmtp && opening.extensions().pipelining);
            let mut tx =
                Transaction::new(opening.extensions(), &envelope(&["a@x.test", "b@x.test", "c@x.test"]), false);
            let results = wire.transact(&mut tx).unwrap();
            assert_eq!(codes(&results), ["sent 250", "failed 550", "failed 452"]);
            assert!(wire.client_text().starts_with("LHLO mx.test\r\nMAIL FROM:<alice@a.test> BODY=8BITMIME\r\n"));
        });
        // No HELO in LMTP: a refused LHLO ends the opening.
        let mut opening = Opening::lmtp("mx.test");
        let step = Wire::new("220 lmtp\r\n500 5.5.1 what\r\n", 4).open(&mut opening);
        assert!(matches!(step, OpenStep::Failed(SmtpError::Refused(_))), "{step:?}");
        // SMTP after the dot: one reply for all.
        let mut tx = Transaction::new(&pipelining(), &envelope(&["a@x.test", "c@x.test"]), false);
        let mut wire = Wire::new("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n", 5);
        assert_eq!(codes(&wire.transact(&mut tx).unwrap()), ["sent 250", "sent 250"]);
    }

    #[test]
    fn base64_vectors() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }
}
