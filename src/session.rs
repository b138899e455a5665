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
//! AUTH (RFC 4954) runs beside this: from Ready, an exchange of 334 challenges and client
//! responses, which ends with the session authenticated (235) or not, in Ready again.
//! The server owns sockets, clocks and files; the session only decides.

use std::net::IpAddr;

use crate::dns::Resolve;
use crate::milter::chain::Verdict;
use crate::policy::authres::Findings;
use crate::policy::{Authenticator, Client, Policy, Refusal, Verified};
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::{Command, MailParams, parse_command};
use crate::smtp::line::MAX_COMMAND_LINE;
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::smtp::sasl::{self, Exchange, Mechanism, Next};
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
    /// A submission port (RFC 6409, RFC 8314): AUTH is offered, and needed before MAIL.
    pub submission: bool,
    /// AUTH may run without TLS in this session (a loopback client, when configured).
    pub auth_plaintext: bool,
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
    /// An AUTH response line over `sasl::MAX_RESPONSE_LINE` was thrown away.
    ResponseTooLong,
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
    /// RFC 3848: SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA.
    pub protocol: &'static str,
    pub max_size: u64,
    /// The authenticated user (RFC 4954), whose `From:` addresses the server checks.
    pub user: Option<String>,
    /// Mail a client of ours submitted (authenticated, trusted or local), not mail that
    /// arrived for us: it gets the submission fixes, and DKIM signing at delivery.
    pub submitted: bool,
    /// What the checks at MAIL found: the fields written above `Received:`.
    pub findings: Findings,
    /// A milter discarded the message at MAIL, RCPT or DATA: it is read, answered 250, and
    /// not queued.
    pub discard: bool,
}

/// The milters as the session asks them, command by command (`milter::chain`, over the
/// server's sockets); the end of the message is the server's to send.
pub trait Filter {
    fn helo(&self, name: &str, tls: bool) -> Verdict;
    fn mail(&self, from: &ReversePath, params: &MailParams, user: Option<&str>) -> Verdict;
    /// A refusal is for this recipient only; a discard is for the message.
    fn rcpt(&self, to: &ForwardPath) -> Verdict;
    fn data(&self) -> Verdict;
    /// The transaction ended before its message (RSET).
    fn abort(&self);
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
    /// Mail of ours whose header section is larger than postern checks (`552 5.3.4`): its
    /// fields past the limit could not be checked, so it is not taken.
    HeaderTooLarge,
    /// The checks at the end of data refused it (`policy::check_message`).
    Refused(Refusal),
    /// A milter refused it, with this reply.
    Filtered(Reply),
}

impl From<&DataError> for Reply {
    fn from(e: &DataError) -> Reply {
        let es = EnhancedStatus::new;
        match e {
            DataError::TooBig => Reply::new(552, es(5, 3, 4), "Error: message size exceeds fixed limit"),
            DataError::BareLineEnding => Reply::new(550, es(5, 5, 2), "Error: bare <CR> or <LF> received"),
            DataError::HeaderTooLarge => Reply::new(552, es(5, 3, 4), "Error: header section too large to check"),
            DataError::TooManyHops => Reply::new(554, es(5, 4, 6), "Error: too many hops, this message is looping"),
            DataError::DiskFull => Reply::new(452, es(4, 3, 1), "Error: insufficient system storage"),
            DataError::WriteFailed => Reply::new(451, es(4, 3, 0), "Error: queue file write error"),
            DataError::Refused(refusal) => Reply::from(refusal),
            DataError::Filtered(reply) => reply.clone(),
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

/// Why AUTH, or a MAIL that needs it, was refused (RFC 4954 §4, §6; RFC 6409 §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    NotEnabled,
    AlreadyDone,
    /// Not without TLS (`538 5.7.11`).
    NeedsTls,
    UnknownMechanism,
    Cancelled,
    Undecodable,
    Failed,
    /// The passwords could not be checked now (`454 4.7.0`, RFC 4954 §6).
    Unavailable,
    LineTooLong,
    /// This address failed too often; the session ends (`421 4.7.0`).
    LockedOut,
    /// MAIL on a submission port before AUTH.
    Required,
    /// MAIL on a submission port before STARTTLS.
    TlsRequired,
    /// MAIL FROM an address the user does not own.
    SenderNotOwned {
        address: String,
        user: String,
    },
}

impl From<&AuthError> for Reply {
    fn from(e: &AuthError) -> Reply {
        let es = EnhancedStatus::new;
        match e {
            AuthError::NotEnabled => Reply::new(503, es(5, 5, 1), "Error: authentication not enabled"),
            AuthError::AlreadyDone => Reply::new(503, es(5, 5, 1), "Error: already authenticated"),
            AuthError::NeedsTls => {
                Reply::new(538, es(5, 7, 11), "Encryption required for requested authentication mechanism")
            }
            AuthError::UnknownMechanism => Reply::new(504, es(5, 5, 4), "Unsupported authentication mechanism"),
            AuthError::Cancelled => Reply::new(501, es(5, 7, 0), "Authentication aborted"),
            AuthError::Undecodable => Reply::new(501, es(5, 5, 2), "Cannot decode response"),
            AuthError::Failed => Reply::new(535, es(5, 7, 8), "Error: authentication failed"),
            AuthError::Unavailable => Reply::new(454, es(4, 7, 0), "Temporary authentication failure"),
            AuthError::LineTooLong => Reply::new(500, es(5, 5, 6), "Authentication exchange line is too long"),
            AuthError::LockedOut => {
                Reply::new(421, es(4, 7, 0), "Error: too many failed logins from this address, try again later")
            }
            AuthError::Required => Reply::new(530, es(5, 7, 0), "Authentication required"),
            AuthError::TlsRequired => Reply::new(530, es(5, 7, 0), "Must issue a STARTTLS command first"),
            AuthError::SenderNotOwned { address, user } => {
                Reply::new(553, es(5, 7, 1), format!("<{address}>: Sender address rejected: not owned by user {user}"))
            }
        }
    }
}

/// An AUTH outcome, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEvent {
    pub mechanism: &'static str,
    pub user: String,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Helo {
    name: String,
    extended: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Transaction {
    from: ReversePath,
    findings: Box<Findings>,
    params: MailParams,
    rcpts: Vec<ForwardPath>,
    refused: u32,
    discard: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Greeted,
    Ready { helo: Helo },
    InTransaction { helo: Helo, tx: Transaction },
    Data { helo: Helo, rcpts: Vec<ForwardPath> },
    Closed,
}

/// A refused sender or recipient, for the log (`NOQUEUE: reject: RCPT from ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `MAIL` or `RCPT`.
    pub stage: &'static str,
    pub reply: Reply,
    pub from: ReversePath,
    pub to: Option<ForwardPath>,
    pub helo: String,
    pub protocol: &'static str,
    /// A milter refused it (`milter-reject` in the log).
    pub milter: bool,
}

pub struct Session<'p> {
    config: &'p SessionConfig,
    /// The last refused recipient, until the server takes it for the log.
    rejected: Option<Rejection>,
    policy: &'p dyn Policy,
    auth: Option<&'p dyn Authenticator>,
    /// Where the checks ask DNS; without it, nothing that needs DNS is checked.
    dns: Option<&'p dyn Resolve>,
    filter: Option<&'p dyn Filter>,
    /// The block lists' refusal of this client (`dnsbl`), given at each RCPT.
    blocked: Option<Reply>,
    /// Whether a greylist triple (`policy::greylist::triple`) may pass now.
    greylist: Option<&'p dyn Fn(&str) -> bool>,
    /// Counts a MAIL command of the client's address; true when it is over its rate.
    message_rate: Option<&'p dyn Fn(IpAddr) -> bool>,
    /// The milters refused the connection: every command but QUIT, RSET, NOOP and HELP gets this.
    refusing: Option<Reply>,
    client: Option<IpAddr>,
    /// Trusted network or local user: may relay without AUTH.
    trusted: bool,
    /// The user, once AUTH succeeded.
    user: Option<String>,
    exchange: Option<Exchange>,
    auth_event: Option<AuthEvent>,
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
            auth: None,
            dns: None,
            filter: None,
            message_rate: None,
            blocked: None,
            greylist: None,
            refusing: None,
            client,
            trusted: config.local_submission || policy.is_trusted(client),
            user: None,
            exchange: None,
            auth_event: None,
            tls: false,
            verbose: false,
            state: State::Greeted,
            errors: 0,
            junk: 0,
        };
        (session, read(Reply::greeting(&config.hostname)))
    }

    /// Who checks passwords; without one, AUTH is not offered.
    pub fn with_authenticator(mut self, auth: &'p dyn Authenticator) -> Session<'p> {
        self.auth = Some(auth);
        self
    }

    /// The checks ask DNS through `dns`.
    pub fn with_dns(mut self, dns: &'p dyn Resolve) -> Session<'p> {
        self.dns = Some(dns);
        self
    }

    /// The block lists list this client: each RCPT is refused with `reply` (after the checks
    /// that refuse a recipient for what it is), so the log counts each one.
    pub fn with_blocked(mut self, reply: Reply) -> Session<'p> {
        self.blocked = Some(reply);
        self
    }

    /// Greylisting: at RCPT, a stranger whose sender did not pass SPF asks `may_pass` about
    /// its triple.
    pub fn with_greylist(mut self, may_pass: &'p dyn Fn(&str) -> bool) -> Session<'p> {
        self.greylist = Some(may_pass);
        self
    }

    /// Each MAIL of a client that is not trusted is counted by `over`, which says when the
    /// address is past `max_message_rate`.
    pub fn with_message_rate(mut self, over: &'p dyn Fn(IpAddr) -> bool) -> Session<'p> {
        self.message_rate = Some(over);
        self
    }

    /// The milters are asked at each command; `connected` is what they said of the connection.
    pub fn with_filter(mut self, filter: &'p dyn Filter, connected: Verdict) -> Session<'p> {
        self.filter = Some(filter);
        if let Verdict::Refuse(reply) = connected {
            self.refusing = Some(reply);
        }
        self
    }

    /// The connection was TLS from its first byte (RFC 8314 §3.3, port 465).
    pub fn tls_from_start(mut self) -> Session<'p> {
        self.tls = true;
        self
    }

    /// The longest line the next read may bring: an AUTH response may be longer than a command.
    pub fn line_limit(&self) -> usize {
        if self.exchange.is_some() { sasl::MAX_RESPONSE_LINE } else { MAX_COMMAND_LINE }
    }

    /// The outcome of the last AUTH, if the last input ended one (for the log).
    pub fn take_auth_event(&mut self) -> Option<AuthEvent> {
        self.auth_event.take()
    }

    fn may_relay(&self) -> bool {
        self.trusted || self.user.is_some()
    }

    /// AUTH is offered here, now.
    fn auth_offered(&self) -> bool {
        self.config.submission && self.auth.is_some() && (self.tls || self.config.auth_plaintext)
    }

    pub fn handle(&mut self, input: Input<'_>) -> Step {
        if self.exchange.is_some() {
            match input {
                Input::Line(line) => return self.auth_response(line),
                Input::LineTooLong | Input::ResponseTooLong => {
                    self.exchange = None;
                    return self.refuse(Reply::from(&AuthError::LineTooLong));
                }
                _ => self.exchange = None,
            }
        }
        match input {
            Input::Line(line) => self.handle_line(line),
            Input::ResponseTooLong => self.refuse(Reply::from(&crate::smtp::command::SyntaxError::LineTooLong)),
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
                self.user = None;
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
        if let Some(reply) = &self.refusing
            && !matches!(command, Command::Quit | Command::Rset | Command::Noop | Command::Help)
        {
            return self.filtered(reply.clone());
        }
        match command {
            Command::Helo(name) => self.helo(name, false),
            Command::Ehlo(name) => self.helo(name, true),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                if let Some(filter) = self.filter {
                    filter.abort();
                }
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
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial.as_deref()),
        }
    }

    /// RFC 4954 §4: AUTH after EHLO, outside a transaction, once, with TLS first.
    fn auth(&mut self, mechanism: &str, initial: Option<&[u8]>) -> Step {
        let Some(auth) = self.auth.filter(|_| self.config.submission) else {
            return self.refuse(Reply::from(&AuthError::NotEnabled));
        };
        match &self.state {
            State::Greeted => return self.refuse(Reply::from(&SequenceError::NeedHelo)),
            State::InTransaction { .. } => return self.refuse(Reply::from(&SequenceError::InTransaction)),
            _ => {}
        }
        if self.user.is_some() {
            return self.refuse(Reply::from(&AuthError::AlreadyDone));
        }
        if !self.tls && !self.config.auth_plaintext {
            return self.refuse(Reply::from(&AuthError::NeedsTls));
        }
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return self.refuse(Reply::from(&AuthError::UnknownMechanism));
        };
        if auth.locked_out(self.client) {
            return self.close(Reply::from(&AuthError::LockedOut));
        }
        let (exchange, next) = Exchange::start(mechanism, initial);
        self.exchange = Some(exchange);
        self.auth_next(mechanism, next)
    }

    fn auth_response(&mut self, line: &[u8]) -> Step {
        let Some(exchange) = &mut self.exchange else { return self.close(Reply::local_error(&self.config.hostname)) };
        let mechanism = exchange.mechanism();
        let next = exchange.respond(line);
        self.auth_next(mechanism, next)
    }

    fn auth_next(&mut self, mechanism: Mechanism, next: Next) -> Step {
        if !matches!(next, Next::Challenge(_)) {
            self.exchange = None;
        }
        match next {
            Next::Challenge(text) => read(Reply::challenge(text)),
            Next::Cancelled => self.refuse(Reply::from(&AuthError::Cancelled)),
            Next::Undecodable => self.refuse(Reply::from(&AuthError::Undecodable)),
            Next::Malformed => self.auth_failed(mechanism, String::new()),
            Next::Verify(credentials) => {
                let verified = self.auth.map(|a| a.verify(self.client, &credentials.user, &credentials.password));
                match verified {
                    Some(Verified::Yes) => {}
                    // Not the client's failure: no error counted, nothing for a lockout.
                    Some(Verified::Unavailable) => return self.refuse(Reply::from(&AuthError::Unavailable)),
                    Some(Verified::No) | None => return self.auth_failed(mechanism, credentials.user),
                }
                self.auth_event =
                    Some(AuthEvent { mechanism: mechanism.name(), user: credentials.user.clone(), ok: true });
                self.user = Some(credentials.user);
                self.errors = 0;
                read(Reply::authenticated())
            }
        }
    }

    /// A failed login: counted as an error, and always answered after the error sleep
    /// (RFC 4954 §14); the session ends once the address is locked out.
    fn auth_failed(&mut self, mechanism: Mechanism, user: String) -> Step {
        self.auth_event = Some(AuthEvent { mechanism: mechanism.name(), user, ok: false });
        if self.auth.is_some_and(|a| a.locked_out(self.client)) {
            return self.close(Reply::from(&AuthError::LockedOut));
        }
        let step = self.refuse(Reply::from(&AuthError::Failed));
        Step { delay: true, ..step }
    }

    fn helo(&mut self, name: String, extended: bool) -> Step {
        // §4.1.4: HELO/EHLO also ends any open transaction.
        if let Some(Verdict::Refuse(reply)) = self.filter.map(|f| f.helo(&name, self.tls)) {
            self.state = State::Greeted;
            return self.filtered(reply);
        }
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
        if self.auth_offered() {
            extensions.push(format!("AUTH {}", sasl::MECHANISMS)); // RFC 4954 §3
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
        if self.config.submission && self.user.is_none() {
            // RFC 6409 §4.3 and RFC 8314 §3.3: a submission port takes mail from its users only.
            let error =
                if self.tls || self.config.auth_plaintext { AuthError::Required } else { AuthError::TlsRequired };
            return self.refuse(Reply::from(&error));
        }
        if let (Some(user), ReversePath::Mailbox(address), Some(auth)) = (&self.user, &from, self.auth)
            && !auth.may_send_as(user, &address.to_string())
        {
            let error = AuthError::SenderNotOwned { address: address.to_string(), user: user.clone() };
            return self.refuse(Reply::from(&error));
        }
        let client = Client {
            ip: self.client,
            helo: &helo.name,
            trusted: self.trusted,
            user: self.user.as_deref(),
            mta: !self.config.submission,
        };
        if let (Some(over), Some(ip), false) = (self.message_rate, self.client, self.trusted)
            && over(ip)
        {
            // Postfix's anvil limit, and its words: the client may try again later.
            let reply = Reply::new(450, EnhancedStatus::new(4, 7, 1), format!("Error: too much mail from {ip}"));
            let protocol = protocol(helo.extended, self.tls, self.user.is_some());
            let rejected = Rejection {
                stage: "MAIL",
                reply: reply.clone(),
                from,
                to: None,
                helo: helo.name.clone(),
                protocol,
                milter: false,
            };
            self.rejected = Some(rejected);
            self.state = State::Ready { helo };
            return self.refuse(reply);
        }
        let verdict = self.policy.check_sender(&client, &from, self.dns);
        let filtered = match (&verdict.refusal, self.filter) {
            (None, Some(filter)) => filter.mail(&from, &params, self.user.as_deref()),
            _ => Verdict::Go,
        };
        let discard = filtered == Verdict::Discard;
        let (reply, milter) = match (verdict.refusal, filtered) {
            (Some(refusal), _) => (Some(Reply::from(&refusal)), false),
            (None, Verdict::Refuse(reply)) => (Some(reply), true),
            (None, _) => (None, false),
        };
        if let Some(reply) = reply {
            let protocol = protocol(helo.extended, self.tls, self.user.is_some());
            self.rejected = Some(Rejection {
                stage: "MAIL",
                reply: reply.clone(),
                from,
                to: None,
                helo: helo.name.clone(),
                protocol,
                milter,
            });
            self.state = State::Ready { helo };
            return if milter { self.filtered(reply) } else { self.refuse(reply) };
        }
        let findings = Box::new(verdict.findings);
        let tx = Transaction { from, findings, params, rcpts: Vec::new(), refused: 0, discard };
        self.state = State::InTransaction { helo, tx };
        self.reply(Reply::sender_ok())
    }

    fn rcpt(&mut self, to: ForwardPath) -> Step {
        let (policy, may_relay, max) = (self.policy, self.may_relay(), self.config.max_recipients.max(MIN_RECIPIENTS));
        let (tls, authenticated) = (self.tls, self.user.is_some());
        let blocked = self.blocked.clone();
        let (greylist, client) = (self.greylist, self.client);
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
        // After the checks of the recipient itself: the block lists' refusal, else greylisting
        // (strangers whose sender did not pass SPF).
        let blocked = blocked.filter(|_| refusal.is_none()).or_else(|| {
            let (Some(may_pass), Some(ip)) = (greylist, client) else { return None };
            let spf_pass = tx.findings.spf() == Some(crate::spf::SpfResult::Pass);
            let key = crate::policy::greylist::triple(ip, &tx.from.to_string(), &to.to_string());
            (refusal.is_none() && !may_relay && !spf_pass && !may_pass(&key))
                .then(|| Reply::new(451, EnhancedStatus::new(4, 7, 1), "Greylisted: try again later"))
        });
        let filtered = match (&refusal, &blocked, self.filter) {
            (None, None, Some(filter)) => filter.rcpt(&to),
            _ => Verdict::Go,
        };
        let (reply, milter) = match (refusal, blocked, filtered) {
            (Some(refusal), _, _) => (Some(Reply::from(&refusal)), false),
            (None, Some(blocked), _) => (Some(blocked), false),
            (None, None, Verdict::Refuse(reply)) => (Some(reply), true),
            (None, None, Verdict::Discard) => {
                tx.discard = true;
                (None, false)
            }
            (None, None, Verdict::Go) => (None, false),
        };
        if let Some(reply) = reply {
            tx.refused += 1;
            let (from, protocol) = (tx.from.clone(), protocol(helo.extended, tls, authenticated));
            self.rejected = Some(Rejection {
                stage: "RCPT",
                reply: reply.clone(),
                from,
                to: Some(to),
                helo: helo.name.clone(),
                protocol,
                milter,
            });
            return if milter { self.filtered(reply) } else { self.refuse(reply) };
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
        let protocol = protocol(helo.extended, self.tls, self.user.is_some());
        let mut discard = tx.discard;
        match self.filter.map(|f| f.data()) {
            Some(Verdict::Refuse(reply)) => {
                self.state = State::InTransaction { helo, tx };
                return self.filtered(reply);
            }
            Some(Verdict::Discard) => discard = true,
            _ => {}
        }
        let submitted = self.may_relay();
        let request = DataRequest {
            from: tx.from,
            params: tx.params,
            rcpts: tx.rcpts.clone(),
            helo: helo.name.clone(),
            protocol,
            max_size: self.config.message_size_limit,
            user: self.user.clone(),
            submitted,
            findings: *tx.findings,
            discard,
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
            Err(e @ DataError::Filtered(_)) => self.filtered(Reply::from(&e)),
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

    /// A milter's refusal: an error like any other, but a `421` ends the session (§3.8).
    fn filtered(&mut self, reply: Reply) -> Step {
        match reply.code() {
            421 => self.close(reply),
            _ => self.refuse(reply),
        }
    }

    fn close(&mut self, reply: Reply) -> Step {
        self.state = State::Closed;
        Step { reply: Some(reply), action: Action::Close, delay: false }
    }
}

/// RFC 3848 §2: SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA (AUTH needs EHLO, so never SMTP).
fn protocol(extended: bool, tls: bool, authenticated: bool) -> &'static str {
    match (extended, tls, authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
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
            submission: false,
            auth_plaintext: false,
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
            h.send("MAIL FROM:<bob@remote.test>");
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
        h.send("MAIL FROM:<bob@remote.test>");
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
            D::TooBig | D::BareLineEnding | D::TooManyHops | D::DiskFull | D::WriteFailed | D::HeaderTooLarge => (),
            D::Refused(_) | D::Filtered(_) => (),
        };
        let _exhaustive = |e: &SequenceError| match e {
            S::NeedHelo | S::NestedMail | S::NeedMail | S::NeedRcpt | S::InTransaction => (),
        };
        let data = [
            (D::TooBig, "552 5.3.4"),
            (D::HeaderTooLarge, "552 5.3.4"),
            (D::BareLineEnding, "550 5.5.2"),
            (D::TooManyHops, "554 5.4.6"),
            (D::DiskFull, "452 4.3.1"),
            (D::WriteFailed, "451 4.3.0"),
            (D::Refused(Refusal::FromNotOwned { address: "b@x.test".into(), user: "a".into() }), "553 5.7.1"),
            (D::Filtered(Reply::new(554, EnhancedStatus::new(5, 7, 1), "Gtube pattern")), "554 5.7.1"),
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
            (DataError::HeaderTooLarge, "552 5.3.4"),
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

    /// alice's password is "pw"; three failures from one address lock it out.
    struct Users {
        failures: std::sync::Mutex<u32>,
    }

    impl Authenticator for Users {
        fn locked_out(&self, _: Option<IpAddr>) -> bool {
            *self.failures.lock().unwrap() >= 3
        }
        fn verify(&self, _: Option<IpAddr>, user: &str, password: &[u8]) -> Verified {
            if user == "carol" {
                return Verified::Unavailable;
            }
            let good = user == "alice" && password == b"pw";
            if !good {
                *self.failures.lock().unwrap() += 1;
            }
            if good { Verified::Yes } else { Verified::No }
        }
        fn may_send_as(&self, user: &str, address: &str) -> bool {
            address == format!("{user}@example.test")
        }
    }

    fn users() -> Users {
        Users { failures: std::sync::Mutex::new(0) }
    }

    fn submission(tls: bool) -> SessionConfig {
        SessionConfig { submission: true, tls_available: true, auth_plaintext: !tls, ..config() }
    }

    const ALICE: &str = "AUTH PLAIN AGFsaWNlAHB3"; // \0alice\0pw

    #[test]
    fn submission_needs_tls_before_auth_and_auth_before_mail() {
        let (c, p, u) = (submission(true), policy(""), users());
        let (session, _) = Session::new(&c, &p, "198.51.100.1".parse().ok());
        let mut h = Harness { session: session.with_authenticator(&u) };
        let step = h.session.handle(Input::Line(b"EHLO x"));
        let lines = step.reply.unwrap().lines().to_vec();
        assert!(lines.contains(&"STARTTLS".to_string()) && !lines.iter().any(|l| l.starts_with("AUTH")), "{lines:?}");
        assert_eq!(h.send(ALICE), "538 5.7.11");
        assert_eq!(h.send("MAIL FROM:<alice@example.test>"), "530 5.7.0");
        h.send("STARTTLS");
        h.session.handle(Input::TlsStarted);
        assert_eq!(h.send(ALICE), "503 5.5.1", "EHLO again first");
        let step = h.session.handle(Input::Line(b"EHLO x"));
        assert!(step.reply.unwrap().lines().contains(&"AUTH PLAIN LOGIN".to_string()));
        assert_eq!(h.send("MAIL FROM:<alice@example.test>"), "530 5.7.0");
        assert_eq!(h.send("AUTH CRAM-MD5"), "504 5.5.4");
        assert_eq!(h.send(ALICE), "235 2.7.0");
        assert_eq!(h.session.take_auth_event(), Some(AuthEvent { mechanism: "PLAIN", user: "alice".into(), ok: true }));
        assert_eq!(h.send(ALICE), "503 5.5.1", "once per session");
        assert_eq!(h.send("MAIL FROM:<bob@example.test>"), "553 5.7.1");
        assert_eq!(h.send("MAIL FROM:<alice@example.test>"), "250 2.1.0");
        assert_eq!(h.send("RCPT TO:<someone@remote.test>"), "250 2.1.5", "an authenticated user relays");
        let step = h.session.handle(Input::Line(b"DATA"));
        let Action::ReceiveData(request) = step.action else { panic!() };
        assert_eq!((request.protocol, request.user.as_deref(), request.submitted), ("ESMTPSA", Some("alice"), true));
    }

    #[test]
    fn auth_is_not_offered_on_the_mta_port_nor_without_an_authenticator() {
        let (c, p, u) = (SessionConfig { tls_available: true, auth_plaintext: true, ..config() }, policy(""), users());
        let (session, _) = Session::new(&c, &p, None);
        let mut h = Harness { session: session.with_authenticator(&u) };
        h.send("EHLO x");
        assert_eq!(h.send(ALICE), "503 5.5.1");
        assert_eq!(h.send("MAIL FROM:<a@remote.test>"), "250 2.1.0", "port 25 takes mail without AUTH");
        let c = submission(false);
        let mut h = Harness::new(&c, &p, "127.0.0.1");
        h.send("EHLO x");
        assert_eq!(h.send(ALICE), "503 5.5.1");
    }

    #[test]
    fn login_cancel_and_bad_responses() {
        let (c, p, u) = (submission(false), policy(""), users());
        let (session, _) = Session::new(&c, &p, None);
        let mut h = Harness { session: session.with_authenticator(&u) };
        h.send("EHLO x");
        assert_eq!(h.send("AUTH LOGIN"), "334");
        assert_eq!(h.session.line_limit(), sasl::MAX_RESPONSE_LINE);
        assert_eq!(h.send("*"), "501 5.7.0");
        assert_eq!(h.session.line_limit(), MAX_COMMAND_LINE);
        assert_eq!(h.send("AUTH PLAIN"), "334");
        assert_eq!(h.send("!!!!"), "501 5.5.2");
        assert_eq!(h.send("AUTH PLAIN"), "334");
        assert_eq!(summary(&h.session.handle(Input::ResponseTooLong)), "500 5.5.6");
        assert_eq!(h.send("AUTH LOGIN YWxpY2U="), "334");
        assert_eq!(h.send("cHc="), "235 2.7.0", "the exchange left by cancel holds nothing");
    }

    #[test]
    fn failures_are_slowed_counted_and_end_in_a_lockout() {
        let (c, p, u) = (submission(false), policy(""), users());
        let (session, _) = Session::new(&c, &p, None);
        let mut h = Harness { session: session.with_authenticator(&u) };
        h.send("EHLO x");
        for _ in 0..2 {
            let step = h.session.handle(Input::Line(b"AUTH PLAIN AGFsaWNlAHB4")); // wrong password
            assert_eq!((summary(&step), step.delay), ("535 5.7.8".into(), true));
            assert_eq!(h.session.take_auth_event().map(|e| (e.user, e.ok)), Some(("alice".into(), false)));
        }
        let step = h.session.handle(Input::Line(b"AUTH PLAIN AGFsaWNlAHB4"));
        assert_eq!((summary(&step), step.action), ("421 4.7.0".into(), Action::Close));
        // Passwords that cannot be checked now (Dovecot down): 454, no failure counted.
        let fresh = users();
        let (session, _) = Session::new(&c, &p, None);
        let mut h = Harness { session: session.with_authenticator(&fresh) };
        h.send("EHLO x");
        let step = h.session.handle(Input::Line(b"AUTH PLAIN AGNhcm9sAHB3")); // carol
        assert_eq!((summary(&step), step.delay, step.action), ("454 4.7.0".into(), false, Action::ReadLine));
        assert_eq!(*fresh.failures.lock().unwrap(), 0, "not counted against the client");
        let (session, _) = Session::new(&c, &p, None);
        let mut h = Harness { session: session.with_authenticator(&u) };
        h.send("EHLO x");
        let step = h.session.handle(Input::Line(ALICE.as_bytes()));
        assert_eq!((summary(&step), step.action), ("421 4.7.0".into(), Action::Close), "even the right password");
    }

    #[test]
    fn timeout_closes_with_421() {
        let (c, p) = (config(), policy(""));
        let (mut session, _) = Session::new(&c, &p, None);
        let step = session.handle(Input::Timeout);
        assert_eq!((summary(&step), step.action), ("421 4.4.2".into(), Action::Close));
    }
    /// A zone with one TXT answer for every name, or a temporary failure.
    struct OneRecord(Option<&'static str>);

    impl Resolve for OneRecord {
        fn txt(&self, _: &str, _: std::time::Instant) -> Result<Vec<Vec<u8>>, crate::dns::DnsFailure> {
            match self.0 {
                Some(text) => Ok(vec![text.as_bytes().to_vec()]),
                None => Err(crate::dns::DnsFailure::Temporary("SERVFAIL".into())),
            }
        }
        fn ips(&self, _: &str, _: bool, _: std::time::Instant) -> Result<Vec<IpAddr>, crate::dns::DnsFailure> {
            Err(crate::dns::DnsFailure::NotFound)
        }
        fn mx(&self, _: &str, _: std::time::Instant) -> Result<Vec<(u16, String)>, crate::dns::DnsFailure> {
            Err(crate::dns::DnsFailure::NotFound)
        }
        fn ptr(&self, _: IpAddr, _: std::time::Instant) -> Result<Vec<String>, crate::dns::DnsFailure> {
            Err(crate::dns::DnsFailure::NotFound)
        }
    }

    #[test]
    fn our_own_domains_are_not_for_strangers_on_the_mta_port() {
        let c = config();
        let p = policy("192.0.2.0/24");
        let mut h = Harness::new(&c, &p, "198.51.100.1");
        h.send("EHLO mx.remote.test");
        assert_eq!(h.send("MAIL FROM:<boss@EXAMPLE.test>"), "550 5.7.1");
        let r = h.session.take_rejection().expect("logged");
        assert_eq!((r.stage, r.to), ("MAIL", None));
        assert_eq!(h.send("RCPT TO:<alice@example.test>"), "503 5.5.1", "no transaction began");
        assert_eq!(h.send("MAIL FROM:<>"), "250 2.1.0", "the null sender is nobody's");
        let mut h = Harness::new(&c, &p, "192.0.2.7");
        h.send("EHLO gateway.example.test");
        assert_eq!(h.send("MAIL FROM:<boss@example.test>"), "250 2.1.0", "a trusted client");
        let off = policy_with("reject_local_senders = off\n");
        let mut h = Harness::new(&c, &off, "198.51.100.1");
        h.send("EHLO mx.remote.test");
        assert_eq!(h.send("MAIL FROM:<boss@example.test>"), "250 2.1.0", "turned off");
    }

    fn policy_with(extra: &str) -> LocalPolicy {
        let text = format!("local_domains = example.test\nrecipient_delimiter = +\n{extra}");
        LocalPolicy::load(&Config::parse(&text, "test").unwrap()).unwrap()
    }

    /// MAIL from `ip` with SPF answers from `dns`: the reply, and what DATA would carry.
    fn spf_mail(dns: &OneRecord, policy: &LocalPolicy, ip: &str, from: &str) -> (String, Option<Findings>) {
        let config = config();
        let (session, _) = Session::new(&config, policy, ip.parse().ok());
        let mut h = Harness { session: session.with_dns(dns) };
        h.send("EHLO mx.remote.test");
        let step = h.session.handle(Input::Line(format!("MAIL FROM:<{from}>").as_bytes()));
        let reply = format!("{} {}", summary(&step), step.reply.unwrap().lines().join(" "));
        if !reply.starts_with("250") {
            return (reply, None);
        }
        assert_eq!(h.send("RCPT TO:<alice@example.test>"), "250 2.1.5");
        let step = h.session.handle(Input::Line(b"DATA"));
        let Action::ReceiveData(request) = step.action else { panic!("{:?}", step.action) };
        (reply, Some(request.findings))
    }

    #[test]
    fn spf_is_asked_at_mail_and_its_verdict_kept_for_the_message() {
        use crate::spf::SpfResult;
        let fail = OneRecord(Some("v=spf1 ip4:192.0.2.0/24 -all"));
        let down = OneRecord(None);
        let p = policy_with("");
        let (reply, _) = spf_mail(&fail, &p, "198.51.100.1", "a@remote.test");
        assert!(reply.starts_with("550 5.7.23 "), "{reply}");
        assert!(reply.contains("198.51.100.1 is not allowed to send mail from remote.test"), "{reply}");
        let (_, found) = spf_mail(&fail, &p, "192.0.2.9", "a@remote.test");
        assert_eq!(found.and_then(|f| f.spf()), Some(SpfResult::Pass));
        // The null sender: the HELO name is checked.
        assert!(spf_mail(&fail, &p, "198.51.100.1", "").0.starts_with("550 5.7.23"));
        // spf_fail = accept records the fail; temperror is accepted unless deferred.
        let accept = policy_with("spf_fail = accept\n");
        let (reply, found) = spf_mail(&fail, &accept, "198.51.100.1", "a@remote.test");
        assert_eq!((reply.get(..3), found.and_then(|f| f.spf())), (Some("250"), Some(SpfResult::Fail)));
        let (reply, found) = spf_mail(&down, &p, "198.51.100.1", "a@remote.test");
        assert_eq!((reply.get(..3), found.and_then(|f| f.spf())), (Some("250"), Some(SpfResult::TempError)));
        let defer = policy_with("spf_temperror = defer\n");
        assert!(spf_mail(&down, &defer, "198.51.100.1", "a@remote.test").0.starts_with("451 4.7.24"));
        // Loopback clients are not checked, nor anyone with SPF off; the fields say so.
        let (reply, found) = spf_mail(&fail, &p, "127.0.0.1", "a@remote.test");
        assert_eq!((reply.get(..3), found.and_then(|f| f.spf())), (Some("250"), None));
        let off = policy_with("spf = off\n");
        let (reply, found) = spf_mail(&fail, &off, "198.51.100.1", "a@remote.test");
        assert_eq!((reply.get(..3), found.and_then(|f| f.spf())), (Some("250"), None));
    }

    /// Milters as the session sees them: what each step says, by the argument's text, and
    /// every call in order.
    struct ScriptedFilter {
        calls: std::cell::RefCell<Vec<String>>,
        answers: Vec<(&'static str, Verdict)>,
    }

    impl ScriptedFilter {
        fn answer(&self, call: String) -> Verdict {
            let verdict = self.answers.iter().find(|(k, _)| call.contains(k)).map_or(Verdict::Go, |(_, v)| v.clone());
            self.calls.borrow_mut().push(call);
            verdict
        }
    }

    impl Filter for ScriptedFilter {
        fn helo(&self, name: &str, tls: bool) -> Verdict {
            self.answer(format!("helo {name} {tls}"))
        }
        fn mail(&self, from: &ReversePath, _: &MailParams, user: Option<&str>) -> Verdict {
            self.answer(format!("mail {from} {user:?}"))
        }
        fn rcpt(&self, to: &ForwardPath) -> Verdict {
            self.answer(format!("rcpt {to}"))
        }
        fn data(&self) -> Verdict {
            self.answer("data".into())
        }
        fn abort(&self) {
            self.calls.borrow_mut().push("abort".into());
        }
    }

    fn milter_reply(code: u16, text: &str) -> Verdict {
        let es = if code >= 500 { EnhancedStatus::new(5, 7, 1) } else { EnhancedStatus::new(4, 7, 1) };
        Verdict::Refuse(Reply::new(code, es, text))
    }

    #[test]
    fn milters_are_asked_after_our_own_checks_and_refuse_with_their_reply() {
        let (c, p) = (config(), policy(""));
        let filter = ScriptedFilter {
            calls: Default::default(),
            answers: vec![
                ("rcpt <bad@example.test>", milter_reply(550, "No such luck")),
                ("rcpt <later@example.test>", milter_reply(451, "Try again")),
                ("mail <spammer@", milter_reply(554, "Go away")),
            ],
        };
        let (session, _) = Session::new(&c, &p, "198.51.100.1".parse().ok());
        let mut h = Harness { session: session.with_filter(&filter, Verdict::Go) };
        assert_eq!(h.send("EHLO client.test"), "250");
        assert_eq!(h.send("MAIL FROM:<spammer@remote.test>"), "554 5.7.1");
        let rejected = h.session.take_rejection().unwrap();
        assert!(rejected.milter && rejected.stage == "MAIL");
        assert_eq!(h.send("MAIL FROM:<a@remote.test>"), "250 2.1.0");
        // Our own refusal comes first: the milter is not asked about a relay attempt.
        assert_eq!(h.send("RCPT TO:<x@elsewhere.test>"), "554 5.7.1");
        assert!(!h.session.take_rejection().unwrap().milter);
        assert_eq!(h.send("RCPT TO:<bad@example.test>"), "550 5.7.1");
        assert_eq!(h.send("RCPT TO:<later@example.test>"), "451 4.7.1");
        assert_eq!(h.send("RCPT TO:<alice@example.test>"), "250 2.1.5");
        let step = h.session.handle(Input::Line(b"DATA"));
        let Action::ReceiveData(request) = step.action else { panic!("{:?}", step.action) };
        assert_eq!(request.rcpts.len(), 1);
        assert!(!request.discard);
        let stop = h.session.handle(Input::DataEnd(Err(DataError::Filtered(Reply::new(
            554,
            EnhancedStatus::new(5, 7, 1),
            "Gtube pattern",
        )))));
        assert_eq!(summary(&stop), "554 5.7.1");
        assert_eq!(h.send("RSET"), "250 2.0.0");
        assert_eq!(
            *filter.calls.borrow(),
            [
                "helo client.test false",
                "mail <spammer@remote.test> None",
                "mail <a@remote.test> None",
                "rcpt <bad@example.test>",
                "rcpt <later@example.test>",
                "rcpt <alice@example.test>",
                "data",
                "abort"
            ]
        );
    }

    #[test]
    fn a_discard_takes_the_message_and_a_421_ends_the_session() {
        let (c, p) = (config(), policy(""));
        let filter = ScriptedFilter {
            calls: Default::default(),
            answers: vec![("rcpt <bin@", Verdict::Discard), ("helo bye.test", milter_reply(421, "Closing"))],
        };
        let (session, _) = Session::new(&c, &p, "198.51.100.1".parse().ok());
        let mut h = Harness { session: session.with_filter(&filter, Verdict::Go) };
        assert_eq!(h.send("EHLO client.test"), "250");
        assert_eq!(h.send("MAIL FROM:<a@remote.test>"), "250 2.1.0");
        assert_eq!(h.send("RCPT TO:<bin@example.test>"), "250 2.1.5");
        let step = h.session.handle(Input::Line(b"DATA"));
        let Action::ReceiveData(request) = step.action else { panic!("{:?}", step.action) };
        assert!(request.discard);
        h.session.handle(Input::DataEnd(Ok(QueueId::generate())));
        let step = h.session.handle(Input::Line(b"EHLO bye.test"));
        assert_eq!((summary(&step), step.action), ("421 4.7.1".to_string(), Action::Close));
    }

    #[test]
    fn a_refused_connection_refuses_every_command_but_quit_rset_noop_and_help() {
        let (c, p) = (config(), policy(""));
        let filter = ScriptedFilter { calls: Default::default(), answers: Vec::new() };
        let (session, _) = Session::new(&c, &p, "198.51.100.1".parse().ok());
        let mut h = Harness { session: session.with_filter(&filter, milter_reply(451, "Service unavailable")) };
        for line in
            ["EHLO client.test", "HELO client.test", "MAIL FROM:<a@remote.test>", "RCPT TO:<alice@example.test>"]
        {
            assert_eq!(h.send(line), "451 4.7.1", "{line}");
        }
        assert_eq!(h.send("NOOP"), "250 2.0.0");
        assert_eq!(h.send("QUIT"), "221 2.0.0");
        assert!(filter.calls.borrow().is_empty());
        // A refused HELO leaves the session greeted only.
        let refusing = ScriptedFilter { calls: Default::default(), answers: vec![("helo", milter_reply(550, "No"))] };
        let (session, _) = Session::new(&c, &p, "198.51.100.1".parse().ok());
        let mut h = Harness { session: session.with_filter(&refusing, Verdict::Go) };
        assert_eq!(h.send("EHLO client.test"), "550 5.7.1");
        assert_eq!(h.send("MAIL FROM:<a@remote.test>"), "503 5.5.1");
    }

    #[test]
    fn greylisting_asks_only_about_strangers_whose_sender_did_not_pass_spf() {
        let dns = OneRecord(Some("v=spf1 ip4:192.0.2.0/24 ~all"));
        let p = policy_with("");
        let asked = std::cell::RefCell::new(Vec::new());
        let never = |key: &str| {
            asked.borrow_mut().push(key.to_string());
            false
        };
        let config = config();
        let rcpt = |ip: &str| {
            let (session, _) = Session::new(&config, &p, ip.parse().ok());
            let mut h = Harness { session: session.with_dns(&dns).with_greylist(&never) };
            h.send("EHLO mx.remote.test");
            assert_eq!(h.send("MAIL FROM:<a@remote.test>"), "250 2.1.0");
            h.send("RCPT TO:<alice@example.test>")
        };
        // SPF pass: not asked.
        assert_eq!(rcpt("192.0.2.9"), "250 2.1.5");
        assert!(asked.borrow().is_empty());
        // Softfail: asked about its triple, and deferred.
        assert_eq!(rcpt("198.51.100.7"), "451 4.7.1");
        assert_eq!(*asked.borrow(), ["198.51.100.0/24 <a@remote.test> <alice@example.test>"]);
    }
}
