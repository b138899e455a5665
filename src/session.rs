//! The SMTP server session (RFC 5321 §4.1.4, §3.3): a pure state machine fed lines, returning replies and actions.
//!
//! ```text
//!            HELO/EHLO              MAIL                 DATA (354)
//! Greeted ------------> Ready ------------> InTransaction ---------> Data
//!    ^  STARTTLS done     ^  RSET/HELO/EHLO      |  RCPT                |
//!    |                    +----------------------+                      |
//!    |                    +------------- DataEnd (250 or error) --------+
//!  any state: QUIT, timeout, too many errors -> Closed
//! ```
//! The server owns sockets, clocks and files; the session only decides.

use std::net::IpAddr;

use crate::policy::{Policy, Refusal};
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::{Command, MailParams, parse_command};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::spool::QueueId;

/// Limits and switches the session applies; taken from the configuration.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub message_size_limit: u64,
    pub max_recipients: usize,
    pub hard_error_limit: u32,
    pub soft_error_limit: u32,
    pub junk_command_limit: u32,
    pub vrfy: bool,
    pub expn: bool,
    /// STARTTLS can be offered (a certificate is configured).
    pub tls_available: bool,
    /// A local user on a pipe (`sendmail -bs`): may relay, as the same user may with
    /// `sendmail addr`; never set for a network peer.
    pub local_submission: bool,
}

/// What the server feeds the session.
#[derive(Debug)]
pub enum Input<'a> {
    /// One command line, CRLF removed.
    Line(&'a [u8]),
    /// A command line over the cap was thrown away.
    LineTooLong,
    /// A command line ended in a bare LF; it was thrown away.
    BareLf,
    /// The outcome of receiving and spooling the message text.
    DataEnd(Result<QueueId, DataError>),
    /// The TLS handshake after STARTTLS succeeded.
    TlsStarted,
    /// The peer was silent past the deadline.
    Timeout,
}

/// What the server must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    ReadLine,
    /// Read the message text and spool it, then feed `Input::DataEnd`.
    ReceiveData(Box<DataRequest>),
    /// Discard buffered input, run the TLS handshake, then feed `Input::TlsStarted`.
    StartTls,
    Close,
}

/// Everything the server needs to write the spool file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRequest {
    pub from: ReversePath,
    pub params: MailParams,
    pub rcpts: Vec<ForwardPath>,
    pub helo: String,
    /// RFC 3848: SMTP, ESMTP or ESMTPS.
    pub protocol: &'static str,
    pub max_size: u64,
}

/// One reply (if any) and the next action. `delay` asks for the error sleep (§7.8 tarpit).
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub reply: Option<Reply>,
    pub action: Action,
    pub delay: bool,
}

/// Why the message text was refused after the final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataError {
    TooBig,
    BareLineEnding,
    TooManyHops,
    /// The spool's filesystem is full (`452 4.3.1`, RFC 3463 §3.4).
    DiskFull,
    /// The queue file could not be written or made durable (`451 4.3.0`).
    WriteFailed,
}

impl From<&DataError> for Reply {
    fn from(e: &DataError) -> Reply {
        let es = EnhancedStatus::new;
        match e {
            DataError::TooBig => Reply::new(552, es(5, 3, 4), "Error: message size exceeds fixed limit"),
            DataError::BareLineEnding => Reply::new(550, es(5, 5, 2), "Error: bare <CR> or <LF> received"),
            DataError::TooManyHops => Reply::new(554, es(5, 4, 6), "Error: too many hops, this message is looping"),
            DataError::DiskFull => Reply::new(452, es(4, 3, 1), "Error: insufficient system storage"),
            DataError::WriteFailed => Reply::new(451, es(4, 3, 0), "Error: queue file write error"),
        }
    }
}

/// A command arrived in the wrong state (`503 5.5.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceError {
    NeedHelo,
    NestedMail,
    NeedMail,
    NeedRcpt,
    InTransaction,
}

impl From<&SequenceError> for Reply {
    fn from(e: &SequenceError) -> Reply {
        let text = match e {
            SequenceError::NeedHelo => "Error: send HELO/EHLO first",
            SequenceError::NestedMail => "Error: nested MAIL command",
            SequenceError::NeedMail => "Error: need MAIL command",
            SequenceError::NeedRcpt => "Error: need RCPT command",
            SequenceError::InTransaction => "Error: MAIL transaction in progress",
        };
        Reply::new(503, EnhancedStatus::new(5, 5, 1), text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Helo {
    name: String,
    extended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    rcpts: Vec<ForwardPath>,
    refused: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Greeted,
    Ready { helo: Helo },
    InTransaction { helo: Helo, tx: Transaction },
    Data { helo: Helo, rcpts: Vec<ForwardPath> },
    Closed,
}

/// A refused recipient, for the log (`NOQUEUE: reject: RCPT from ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reply: Reply,
    pub from: ReversePath,
    pub to: ForwardPath,
    pub helo: String,
    pub protocol: &'static str,
}

pub struct Session<'p> {
    config: &'p SessionConfig,
    /// The last refused recipient, until the server takes it for the log.
    rejected: Option<Rejection>,
    policy: &'p dyn Policy,
    may_relay: bool,
    tls: bool,
    verbose: bool,
    state: State,
    errors: u32,
    junk: u32,
}

/// RFC 5321 §4.5.3.1.8: at least 100 recipients must be buffered.
pub const MIN_RECIPIENTS: usize = 100;
/// RFC 5321 §6.3: refuse at 100 `Received:` fields, a loop.
pub const MAX_HOPS: usize = 100;

impl<'p> Session<'p> {
    /// A new session for a client; the step carries the 220 greeting.
    pub fn new(config: &'p SessionConfig, policy: &'p dyn Policy, client: Option<IpAddr>) -> (Session<'p>, Step) {
        let session = Session {
            config,
            policy,
            rejected: None,
            may_relay: config.local_submission || policy.is_trusted(client),
            tls: false,
            verbose: false,
            state: State::Greeted,
            errors: 0,
            junk: 0,
        };
        (session, read(Reply::greeting(&config.hostname)))
    }

    pub fn handle(&mut self, input: Input<'_>) -> Step {
        match input {
            Input::Line(line) => self.handle_line(line),
            Input::LineTooLong => self.refuse(Reply::from(&crate::smtp::command::SyntaxError::LineTooLong)),
            // RFC 5321 §2.3.8 and §4.1.1.4: only CRLF ends a line. The line is not run, and the
            // session ends: after a bare LF, whether the next bytes are a new command or the
            // rest of this one depends on a framing we do not share with the client, which is
            // the ambiguity command smuggling lives on. The client is told why, permanently.
            Input::BareLf => self.close(Reply::bare_lf()),
            Input::DataEnd(result) => self.data_end(result),
            Input::TlsStarted => {
                // RFC 3207 §4.2: forget everything learned before TLS.
                self.tls = true;
                self.state = State::Greeted;
                Step { reply: None, action: Action::ReadLine, delay: false }
            }
            Input::Timeout => self.close(Reply::timeout(&self.config.hostname)),
        }
    }

    fn handle_line(&mut self, line: &[u8]) -> Step {
        if matches!(self.state, State::Data { .. } | State::Closed) {
            return self.close(Reply::local_error(&self.config.hostname));
        }
        let command = match parse_command(line) {
            Ok(c) => c,
            Err(e) => return self.refuse(Reply::from(&e)),
        };
        match command {
            Command::Helo(name) => self.helo(name, false),
            Command::Ehlo(name) => self.helo(name, true),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                self.state = match std::mem::replace(&mut self.state, State::Closed) {
                    State::Ready { helo } | State::InTransaction { helo, .. } => State::Ready { helo },
                    other => other,
                };
                self.junk(Reply::ok())
            }
            Command::Noop => self.junk(Reply::ok()),
            Command::Quit => self.close(Reply::closing(&self.config.hostname)),
            Command::Help => self.junk(Reply::help()),
            Command::Vrfy(name) => self.vrfy(&name),
            Command::Expn(name) => self.expn(&name),
            Command::Verb => {
                self.verbose = true;
                self.reply(Reply::verbose_on())
            }
            Command::StartTls => self.starttls(),
        }
    }

    fn helo(&mut self, name: String, extended: bool) -> Step {
        // §4.1.4: HELO/EHLO also ends any open transaction.
        self.state = State::Ready { helo: Helo { name, extended } };
        let host = &self.config.hostname;
        if !extended {
            return self.reply(Reply::helo(host));
        }
        let mut extensions = vec![
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.message_size_limit),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "SMTPUTF8".to_string(),
        ];
        if self.config.tls_available && !self.tls {
            extensions.push("STARTTLS".to_string()); // RFC 3207 §4.2: never again under TLS
        }
        self.reply(Reply::ehlo(host, &extensions))
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Step {
        let helo = match &self.state {
            State::Greeted => return self.refuse(Reply::from(&SequenceError::NeedHelo)),
            State::InTransaction { .. } => {
                return self.refuse(Reply::from(&SequenceError::NestedMail));
            }
            State::Ready { helo } => helo.clone(),
            State::Data { .. } | State::Closed => {
                return self.close(Reply::local_error(&self.config.hostname));
            }
        };
        if params.any() && !helo.extended {
            return self.refuse(Reply::from(&Refusal::NotOffered("ESMTP parameters")));
        }
        if !from.is_ascii() && !params.smtputf8 {
            return self.refuse(Reply::from(&Refusal::NeedsSmtputf8));
        }
        if params.size.is_some_and(|s| s > self.config.message_size_limit) {
            return self.refuse(Reply::from(&Refusal::MessageTooBig)); // RFC 1870 §6.1
        }
        let tx = Transaction { from, params, rcpts: Vec::new(), refused: 0 };
        self.state = State::InTransaction { helo, tx };
        self.reply(Reply::sender_ok())
    }

    fn rcpt(&mut self, to: ForwardPath) -> Step {
        let (policy, may_relay, max) = (self.policy, self.may_relay, self.config.max_recipients.max(MIN_RECIPIENTS));
        let tls = self.tls;
        let (helo, tx) = match &mut self.state {
            State::InTransaction { helo, tx } => (helo, tx),
            State::Greeted => return self.refuse(Reply::from(&SequenceError::NeedHelo)),
            _ => return self.refuse(Reply::from(&SequenceError::NeedMail)),
        };
        let refusal = if !to.is_ascii() && !tx.params.smtputf8 {
            Some(Refusal::NeedsSmtputf8)
        } else if tx.rcpts.len() >= max {
            // §4.5.3.1.10: 452, and the client sends the rest later; not a client error.
            return self.reply(Reply::from(&Refusal::TooManyRecipients));
        } else {
            policy.check_recipient(&to, may_relay).err()
        };
        if let Some(refusal) = refusal {
            tx.refused += 1;
            let reply = Reply::from(&refusal);
            let (from, protocol) = (tx.from.clone(), protocol(helo.extended, tls));
            self.rejected = Some(Rejection { reply: reply.clone(), from, to, helo: helo.name.clone(), protocol });
            return self.refuse(reply);
        }
        if !tx.rcpts.contains(&to) {
            tx.rcpts.push(to);
        }
        self.reply(Reply::recipient_ok())
    }

    fn data(&mut self) -> Step {
        let (helo, tx) = match std::mem::replace(&mut self.state, State::Closed) {
            State::InTransaction { helo, tx } if !tx.rcpts.is_empty() => (helo, tx),
            State::InTransaction { helo, tx } => {
                let refused = tx.refused > 0;
                self.state = State::InTransaction { helo, tx };
                return match refused {
                    true => self.refuse(Reply::from(&Refusal::NoValidRecipients)),
                    false => self.refuse(Reply::from(&SequenceError::NeedRcpt)),
                };
            }
            other => {
                let error = if other == State::Greeted { SequenceError::NeedHelo } else { SequenceError::NeedMail };
                self.state = other;
                return self.refuse(Reply::from(&error));
            }
        };
        let protocol = protocol(helo.extended, self.tls);
        let request = DataRequest {
            from: tx.from,
            params: tx.params,
            rcpts: tx.rcpts.clone(),
            helo: helo.name.clone(),
            protocol,
            max_size: self.config.message_size_limit,
        };
        self.state = State::Data { helo, rcpts: tx.rcpts };
        Step { reply: Some(Reply::start_data()), action: Action::ReceiveData(Box::new(request)), delay: false }
    }

    fn data_end(&mut self, result: Result<QueueId, DataError>) -> Step {
        let State::Data { helo, rcpts } = std::mem::replace(&mut self.state, State::Closed) else {
            return self.close(Reply::local_error(&self.config.hostname));
        };
        self.state = State::Ready { helo };
        match result {
            Ok(id) => {
                self.errors = 0;
                self.junk = 0;
                let reply = match self.verbose {
                    true => {
                        Reply::queued_verbose(id.as_str(), &rcpts.iter().map(|r| r.to_string()).collect::<Vec<_>>())
                    }
                    false => Reply::queued(id.as_str()),
                };
                self.reply(reply)
            }
            Err(e) => self.refuse(Reply::from(&e)),
        }
    }

    fn vrfy(&mut self, name: &str) -> Step {
        if !self.config.vrfy {
            return self.junk(Reply::cannot_verify());
        }
        match self.policy.verify(name) {
            Some(address) => self.junk(Reply::verified(&address)),
            None => self.refuse(Reply::no_such_user(name)),
        }
    }

    fn expn(&mut self, name: &str) -> Step {
        if !self.config.expn {
            return self.junk(Reply::cannot_expand());
        }
        match self.policy.expand(name) {
            Some(members) => self.junk(Reply::expanded(&members)),
            None => self.refuse(Reply::no_such_user(name)),
        }
    }

    fn starttls(&mut self) -> Step {
        if self.tls {
            return self.refuse(Reply::tls_already_active());
        }
        if !self.config.tls_available {
            return self.refuse(Reply::from(&crate::smtp::command::SyntaxError::NotImplemented("STARTTLS")));
        }
        if matches!(self.state, State::InTransaction { .. }) {
            return self.refuse(Reply::from(&SequenceError::InTransaction));
        }
        Step { reply: Some(Reply::ready_for_tls()), action: Action::StartTls, delay: false }
    }

    /// A good reply; the session reads on.
    fn reply(&mut self, reply: Reply) -> Step {
        read(reply)
    }

    /// The recipient refused by the last input, if it refused one (for the log).
    pub fn take_rejection(&mut self) -> Option<Rejection> {
        self.rejected.take()
    }

    /// NOOP, RSET, HELP, VRFY, EXPN: harmless alone; past the junk limit each counts as an error.
    fn junk(&mut self, reply: Reply) -> Step {
        self.junk = self.junk.saturating_add(1);
        if self.junk > self.config.junk_command_limit {
            self.errors = self.errors.saturating_add(1);
            if self.errors > self.config.hard_error_limit {
                return self.close(Reply::too_many_errors(&self.config.hostname));
            }
        }
        read(reply)
    }

    /// An error reply: counted, slowed past the soft limit, and the session ends past the hard limit (§7.8).
    fn refuse(&mut self, reply: Reply) -> Step {
        self.errors = self.errors.saturating_add(1);
        if self.errors > self.config.hard_error_limit {
            return self.close(Reply::too_many_errors(&self.config.hostname));
        }
        Step { reply: Some(reply), action: Action::ReadLine, delay: self.errors > self.config.soft_error_limit }
    }

    fn close(&mut self, reply: Reply) -> Step {
        self.state = State::Closed;
        Step { reply: Some(reply), action: Action::Close, delay: false }
    }
}

/// RFC 3848: SMTP, ESMTP or ESMTPS.
fn protocol(extended: bool, tls: bool) -> &'static str {
    match (extended, tls) {
        (false, _) => "SMTP",
        (true, false) => "ESMTP",
        (true, true) => "ESMTPS",
    }
}

fn read(reply: Reply) -> Step {
    Step { reply: Some(reply), action: Action::ReadLine, delay: false }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::LocalPolicy;

    fn config() -> SessionConfig {
        SessionConfig {
            hostname: "mail.example.test".into(),
            message_size_limit: 1000,
            max_recipients: 100,
            hard_error_limit: 20,
            soft_error_limit: 10,
            junk_command_limit: 100,
            vrfy: false,
            expn: false,
            tls_available: false,
            local_submission: false,
        }
    }

    fn policy(trusted: &str) -> LocalPolicy {
        let text = format!("local_domains = example.test\ntrusted_networks = {trusted}\nrecipient_delimiter = +\n");
        LocalPolicy::load(&Config::parse(&text, "test").unwrap()).unwrap()
    }

    /// Feeds lines and returns each reply as "code status" or "code".
    struct Harness<'p> {
        session: Session<'p>,
    }

    impl<'p> Harness<'p> {
        fn new(config: &'p SessionConfig, policy: &'p LocalPolicy, client: &str) -> Harness<'p> {
            let (session, greeting) = Session::new(config, policy, client.parse().ok());
            assert_eq!(greeting.reply.unwrap().code(), 220);
            Harness { session }
        }

        fn send(&mut self, line: &str) -> String {
            let step = self.session.handle(Input::Line(line.as_bytes()));
            summary(&step)
        }
    }

    fn summary(step: &Step) -> String {
        let reply = step.reply.as_ref().unwrap();
        match reply.status() {
            Some(s) => format!("{} {}.{}.{}", reply.code(), s.0, s.1, s.2),
            None => reply.code().to_string(),
        }
    }

    #[test]
    fn a_whole_transaction() {
        let (c, p) = (config(), policy("192.0.2.0/24"));
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        assert_eq!(h.send("EHLO client.test"), "250");
        assert_eq!(h.send("MAIL FROM:<a@remote.test> SIZE=10 BODY=8BITMIME"), "250 2.1.0");
        assert_eq!(h.send("RCPT TO:<alice@example.test>"), "250 2.1.5");
        let step = h.session.handle(Input::Line(b"DATA"));
        assert_eq!(summary(&step), "354");
        let Action::ReceiveData(request) = step.action else { panic!("{:?}", step.action) };
        assert_eq!(request.protocol, "ESMTP");
        assert_eq!(request.rcpts.len(), 1);
        let id = QueueId::generate();
        let step = h.session.handle(Input::DataEnd(Ok(id.clone())));
        assert_eq!(step.reply.unwrap().lines(), [format!("Ok: queued as {id}")]);
        assert_eq!(h.send("MAIL FROM:<>"), "250 2.1.0");
        let step = h.session.handle(Input::Line(b"QUIT"));
        assert_eq!((summary(&step), step.action), ("221 2.0.0".into(), Action::Close));
    }

    #[test]
    fn sequence_errors() {
        let (c, p) = (config(), policy(""));
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        assert_eq!(h.send("MAIL FROM:<a@b.test>"), "503 5.5.1");
        assert_eq!(h.send("RCPT TO:<alice@example.test>"), "503 5.5.1");
        assert_eq!(h.send("DATA"), "503 5.5.1");
        assert_eq!(h.send("HELO x"), "250");
        assert_eq!(h.send("RCPT TO:<alice@example.test>"), "503 5.5.1");
        assert_eq!(h.send("MAIL FROM:<a@b.test>"), "250 2.1.0");
        assert_eq!(h.send("MAIL FROM:<a@b.test>"), "503 5.5.1");
        assert_eq!(h.send("DATA"), "503 5.5.1");
        assert_eq!(h.send("RCPT TO:<nobody@remote.test>"), "554 5.7.1");
        assert_eq!(h.send("DATA"), "554 5.5.1");
        assert_eq!(h.send("EHLO x"), "250");
        assert_eq!(h.send("RCPT TO:<alice@example.test>"), "503 5.5.1"); // EHLO reset the transaction
    }

    #[test]
    fn esmtp_parameters_need_ehlo() {
        let (c, p) = (config(), policy(""));
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        assert_eq!(h.send("HELO x"), "250");
        assert_eq!(h.send("MAIL FROM:<a@b.test> SIZE=10"), "555 5.5.4");
        assert_eq!(h.send("EHLO x"), "250");
        assert_eq!(h.send("MAIL FROM:<a@b.test> SIZE=1001"), "552 5.3.4");
        assert_eq!(h.send("MAIL FROM:<a@b.test> SIZE=99999999999999999999999"), "552 5.3.4");
        assert_eq!(h.send("MAIL FROM:<jö@b.test>"), "553 5.6.7");
        assert_eq!(h.send("MAIL FROM:<jö@b.test> SMTPUTF8"), "250 2.1.0");
        assert_eq!(h.send("RCPT TO:<alice@example.test> NOTIFY=NEVER"), "555 5.5.4");
    }

    #[test]
    fn relay_is_for_trusted_clients_only() {
        let (c, p) = (config(), policy("192.0.2.0/24"));
        for (client, verdict) in [("198.51.100.1", "554 5.7.1"), ("192.0.2.7", "250 2.1.5"), ("none", "554 5.7.1")] {
            let mut h = Harness::new(&c, &p, client);
            h.send("EHLO example.test");
            h.send("MAIL FROM:<alice@example.test>");
            assert_eq!(h.send("RCPT TO:<relaytest@remote.test>"), verdict, "{client}");
            assert_eq!(h.send("RCPT TO:<alice@example.test>"), "250 2.1.5");
        }
    }

    #[test]
    fn a_local_submitter_may_relay_without_an_address() {
        let (c, p) = (SessionConfig { local_submission: true, ..config() }, policy("192.0.2.0/24"));
        let mut h = Harness::new(&c, &p, "none");
        h.send("EHLO localhost");
        h.send("MAIL FROM:<alice@example.test>");
        assert_eq!(h.send("RCPT TO:<relaytest@remote.test>"), "250 2.1.5");
        let plain = config();
        let mut h = Harness::new(&plain, &p, "none");
        h.send("EHLO localhost");
        h.send("MAIL FROM:<alice@example.test>");
        assert_eq!(h.send("RCPT TO:<relaytest@remote.test>"), "554 5.7.1", "a pipe alone is no local user");
    }

    #[test]
    fn too_many_recipients_is_452_and_keeps_the_first_hundred() {
        let (c, p) = (config(), policy(""));
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        h.send("EHLO x");
        h.send("MAIL FROM:<a@b.test>");
        let replies: Vec<String> = (0..150).map(|i| h.send(&format!("RCPT TO:<u{i}@example.test>"))).collect();
        assert!(replies[..100].iter().all(|r| r == "250 2.1.5"));
        assert!(replies[100..].iter().all(|r| r == "452 4.5.3"));
        let step = h.session.handle(Input::Line(b"DATA"));
        let Action::ReceiveData(request) = step.action else { panic!() };
        assert_eq!(request.rcpts.len(), 100);
    }

    #[test]
    fn errors_slow_down_then_close() {
        let (c, p) = (config(), policy(""));
        let (mut session, _) = Session::new(&c, &p, None);
        for i in 1..=20 {
            let step = session.handle(Input::Line(b"FOO"));
            assert_eq!((summary(&step), step.delay), ("500 5.5.2".into(), i > 10), "command {i}");
        }
        let step = session.handle(Input::Line(b"FOO"));
        assert_eq!((summary(&step), step.action), ("421 4.7.0".into(), Action::Close));
    }

    #[test]
    fn junk_commands_count_after_the_limit() {
        let (c, p) = (config(), policy(""));
        let (mut session, _) = Session::new(&c, &p, None);
        let closed = (0..200).position(|_| session.handle(Input::Line(b"NOOP")).action == Action::Close);
        assert_eq!(closed, Some(120)); // 100 free, then 20 counted, the 21st closes
    }

    #[test]
    fn a_delivered_message_resets_the_error_count() {
        let (c, p) = (config(), policy(""));
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        h.send("EHLO x");
        for _ in 0..15 {
            h.send("FOO");
        }
        h.send("MAIL FROM:<a@b.test>");
        h.send("RCPT TO:<alice@example.test>");
        h.send("DATA");
        h.session.handle(Input::DataEnd(Ok(QueueId::generate())));
        for _ in 0..15 {
            assert_eq!(h.send("FOO"), "500 5.5.2");
        }
    }

    #[test]
    fn every_sequence_and_data_error_has_its_code_and_an_agreeing_class() {
        use DataError as D;
        use SequenceError as S;
        let _exhaustive = |e: &DataError| match e {
            D::TooBig | D::BareLineEnding | D::TooManyHops | D::DiskFull | D::WriteFailed => (),
        };
        let _exhaustive = |e: &SequenceError| match e {
            S::NeedHelo | S::NestedMail | S::NeedMail | S::NeedRcpt | S::InTransaction => (),
        };
        let data = [
            (D::TooBig, "552 5.3.4"),
            (D::BareLineEnding, "550 5.5.2"),
            (D::TooManyHops, "554 5.4.6"),
            (D::DiskFull, "452 4.3.1"),
            (D::WriteFailed, "451 4.3.0"),
        ];
        let sequence = [S::NeedHelo, S::NestedMail, S::NeedMail, S::NeedRcpt, S::InTransaction];
        let replies = data
            .iter()
            .map(|(e, want)| (Reply::from(e), *want, format!("{e:?}")))
            .chain(sequence.iter().map(|e| (Reply::from(e), "503 5.5.1", format!("{e:?}"))));
        for (reply, want, name) in replies {
            let EnhancedStatus(a, b, c) = reply.status().expect("an enhanced code");
            assert_eq!(format!("{} {a}.{b}.{c}", reply.code()), want, "{name}");
            assert!(reply.agrees() && reply.is_error(), "{name}");
        }
    }

    #[test]
    fn data_errors_leave_the_session_usable() {
        let (c, p) = (config(), policy(""));
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        h.send("EHLO x");
        for (error, want) in [
            (DataError::BareLineEnding, "550 5.5.2"),
            (DataError::TooBig, "552 5.3.4"),
            (DataError::TooManyHops, "554 5.4.6"),
            (DataError::DiskFull, "452 4.3.1"),
            (DataError::WriteFailed, "451 4.3.0"),
        ] {
            h.send("MAIL FROM:<a@b.test>");
            h.send("RCPT TO:<alice@example.test>");
            h.send("DATA");
            assert_eq!(summary(&h.session.handle(Input::DataEnd(Err(error)))), want);
        }
        assert_eq!(h.send("MAIL FROM:<a@b.test>"), "250 2.1.0");
    }

    #[test]
    fn vrfy_and_expn_say_nothing_by_default() {
        let (c, p) = (config(), policy(""));
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        assert_eq!(h.send("VRFY alice"), "252 2.5.2");
        assert_eq!(h.send("EXPN staff"), "252 2.5.2");
        let c = SessionConfig { vrfy: true, ..config() };
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        assert_eq!(h.send("VRFY alice"), "250 2.1.5");
        assert_eq!(h.send("VRFY bad/name"), "550 5.1.1");
    }

    #[test]
    fn starttls_resets_to_greeted_and_is_offered_once() {
        let c = SessionConfig { tls_available: true, ..config() };
        let p = policy("");
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        h.send("EHLO x");
        h.send("MAIL FROM:<a@b.test>");
        assert_eq!(h.send("STARTTLS"), "503 5.5.1");
        h.send("RSET");
        let step = h.session.handle(Input::Line(b"STARTTLS"));
        assert_eq!((summary(&step), &step.action), ("220 2.0.0".into(), &Action::StartTls));
        h.session.handle(Input::TlsStarted);
        assert_eq!(h.send("MAIL FROM:<a@b.test>"), "503 5.5.1");
        let step = h.session.handle(Input::Line(b"EHLO x"));
        assert!(!step.reply.unwrap().lines().iter().any(|l| l == "STARTTLS"));
        assert_eq!(h.send("STARTTLS"), "554 5.5.1");
    }

    #[test]
    fn timeout_closes_with_421() {
        let (c, p) = (config(), policy(""));
        let (mut session, _) = Session::new(&c, &p, None);
        let step = session.handle(Input::Timeout);
        assert_eq!((summary(&step), step.action), ("421 4.4.2".into(), Action::Close));
    }
}
