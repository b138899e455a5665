//! The milters of one session, asked in order at each step of the SMTP conversation, as
//! Postfix asks its `smtpd_milters`: the first to refuse decides, one that accepts is asked
//! nothing more about the message (or, at the connection's steps, the connection), and one
//! that fails gets `milter_default_action`. At the end of the message each milter is sent
//! the message as the milters before it left it, so the changes of all of them add up.

use std::io;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::client::{Address, Failure, Milter};
use super::edit::{Edited, Replacing};
use super::path_text;
use super::protocol::{self, Answer, CHUNK, Stage, cmd};
use crate::config::MilterDefault;
use crate::smtp::reply::{EnhancedStatus, Reply};

/// What the milters say of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on.
    Go,
    /// Refuse the command (or the recipient, at RCPT) with this reply; `421` ends the session.
    Refuse(Reply),
    /// Take the message, then throw it away.
    Discard,
}

/// The queued message, read where it lies (a draft of the spool): its octets from `at`.
pub trait Source {
    fn size(&self) -> u64;
    fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// The largest header section sent to milters; a longer one is refused at the end of data
/// (a milter must see every field, or a field past the limit could hide what it judges).
pub const MAX_HEADER: usize = 256 * 1024;

/// `450 4.7.1`-style replies Postfix gives for a milter's bare verdicts.
pub fn tempfail_reply() -> Reply {
    Reply::new(451, EnhancedStatus::new(4, 7, 1), "Service unavailable - try again later")
}

pub fn reject_reply() -> Reply {
    Reply::new(550, EnhancedStatus::new(5, 7, 1), "Command rejected")
}

fn shutdown_reply() -> Reply {
    Reply::new(421, EnhancedStatus::new(4, 7, 0), "Server closing connection")
}

fn header_too_large() -> Reply {
    Reply::new(552, EnhancedStatus::new(5, 3, 4), "Error: header section too large to check")
}

/// Whether a milter is asked about the rest of the connection, or of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    No,
    Message,
    Connection,
}

struct Slot {
    address: Address,
    milter: Option<Milter>,
    done: Done,
    /// It was sent MAIL and has not seen the message's end or an abort since.
    in_message: bool,
}

pub struct Chain {
    slots: Vec<Slot>,
    timeout: Duration,
    default: MilterDefault,
    /// A failed milter's default action, which every later step gets.
    broken: Option<Reply>,
}

/// The connection as the milters are told of it.
pub struct Connect<'a> {
    /// Our host name (`j`).
    pub hostname: &'a str,
    /// The client's confirmed name, if it has one.
    pub client_name: Option<&'a str>,
    /// Its address and port; `None` for mail from postern-sendmail (`localhost`).
    pub peer: Option<(IpAddr, u16)>,
    /// `{daemon_name}`: the program taking the mail.
    pub daemon: &'a str,
}

impl Chain {
    /// Milters at `addresses`, not yet connected (`connect` does it).
    pub fn new(addresses: &[Address], timeout: Duration, default: MilterDefault) -> Chain {
        let slots = addresses
            .iter()
            .map(|a| Slot { address: a.clone(), milter: None, done: Done::No, in_message: false })
            .collect();
        Chain { slots, timeout, default, broken: None }
    }

    /// Connects to each milter and tells it of the client (`SMFIC_CONNECT`).
    pub fn connect(&mut self, c: &Connect<'_>, deadline: Instant) -> Verdict {
        let addr = c.peer.map(|(ip, _)| ip.to_canonical().to_string());
        let name = match (c.client_name, &addr) {
            (Some(n), _) => n.to_string(),
            (None, Some(a)) => format!("[{a}]"),
            (None, None) => "localhost".to_string(),
        };
        let addr = addr.unwrap_or_else(|| "127.0.0.1".to_string());
        // The connection's macros go with the connection only: milters keep each step's.
        let mut macros: Vec<(String, String)> = vec![
            ("j".into(), c.hostname.to_string()),
            ("{daemon_name}".into(), c.daemon.to_string()),
            ("v".into(), concat!("postern ", env!("CARGO_PKG_VERSION")).to_string()),
            ("_".into(), format!("{name} [{addr}]")),
            ("{client_addr}".into(), addr.clone()),
            ("{client_name}".into(), name.clone()),
        ];
        if let Some((_, port)) = c.peer {
            macros.push(("{client_port}".into(), port.to_string()));
        }
        for i in 0..self.slots.len() {
            match Milter::open(&self.slots[i].address, self.timeout, deadline) {
                Ok(m) => self.slots[i].milter = Some(m),
                Err(f) => {
                    if let Some(v) = self.fail(i, &f) {
                        return v;
                    }
                }
            }
        }
        let packet = protocol::connect(&name, c.peer);
        self.each(Stage::Connect, cmd::CONNECT, &macros, &packet, deadline, true)
    }

    /// HELO or EHLO; `tls_version` once the session is under TLS.
    pub fn helo(&mut self, name: &str, tls_version: Option<&str>, deadline: Instant) -> Verdict {
        self.abort(deadline);
        let mut macros = Vec::new();
        if let Some(v) = tls_version {
            macros.push(("{tls_version}".to_string(), v.to_string()));
        }
        self.each(Stage::Helo, cmd::HELO, &macros, &protocol::helo(name), deadline, true)
    }

    /// MAIL FROM: a new message, so each milter is asked again.
    pub fn mail(&mut self, from: &str, params: &[String], user: Option<&str>, deadline: Instant) -> Verdict {
        self.abort(deadline);
        for slot in &mut self.slots {
            if slot.done == Done::Message {
                slot.done = Done::No;
            }
        }
        let mut macros = vec![("{mail_addr}".to_string(), path_text(from).to_string())];
        if let Some(user) = user {
            macros.push(("{auth_authen}".into(), user.to_string()));
        }
        let verdict = self.each(Stage::Mail, cmd::MAIL, &macros, &protocol::mail(from, params), deadline, false);
        for slot in &mut self.slots {
            slot.in_message = slot.milter.is_some() && slot.done != Done::Connection;
        }
        verdict
    }

    /// RCPT TO: a refusal is for this recipient only; a discard is for the message.
    pub fn rcpt(&mut self, to: &str, deadline: Instant) -> Verdict {
        let macros = [("{rcpt_addr}".to_string(), path_text(to).to_string())];
        self.each(Stage::Rcpt, cmd::RCPT, &macros, &protocol::rcpt(to, &[]), deadline, false)
    }

    /// The DATA command, before the 354.
    pub fn data(&mut self, deadline: Instant) -> Verdict {
        self.each(Stage::Data, cmd::DATA, &[], &protocol::bare(cmd::DATA), deadline, false)
    }

    /// Some milter is still to be asked about this message.
    pub fn wants_message(&self) -> bool {
        self.broken.is_none() && self.slots.iter().any(|s| s.milter.is_some() && s.done == Done::No)
    }

    /// The end of the message: each milter still asking is sent its header fields, the end
    /// of the header, the body in chunks and the end of the body, and answers with its
    /// changes and its verdict. `id` is the queue ID (`i`); a replaced body is at most
    /// `max_body` octets, or the milter failed.
    pub fn message(&mut self, id: &str, source: &dyn Source, max_body: u64, deadline: Instant) -> (Verdict, Edited) {
        if let Some(reply) = &self.broken {
            return (Verdict::Refuse(reply.clone()), Edited::default());
        }
        let (header, body_start) = match read_header(source) {
            Ok(Some(found)) => found,
            Ok(None) => return (Verdict::Refuse(header_too_large()), Edited::default()),
            Err(e) => {
                log::warn!("milters: cannot read the message: {e}");
                return (Verdict::Refuse(tempfail_reply()), Edited::default());
            }
        };
        let mut edited = Edited { body_start, ..Edited::new(&header) };
        let id_macro = [("i".to_string(), id.to_string())];
        for i in 0..self.slots.len() {
            if self.slots[i].milter.is_none() || self.slots[i].done != Done::No {
                continue;
            }
            match self.one_message(i, &id_macro, &mut edited, source, body_start, max_body, deadline) {
                Ok(Verdict::Go) => {}
                Ok(verdict) => {
                    self.abort(deadline);
                    return (verdict, edited);
                }
                Err(f) => {
                    if let Some(v) = self.fail(i, &f) {
                        self.abort(deadline);
                        return (v, edited);
                    }
                }
            }
        }
        for slot in &mut self.slots {
            slot.in_message = false;
        }
        (Verdict::Go, edited)
    }

    #[allow(clippy::too_many_arguments)]
    fn one_message(
        &mut self,
        i: usize,
        id_macro: &[(String, String)],
        edited: &mut Edited,
        source: &dyn Source,
        body_start: u64,
        max_body: u64,
        deadline: Instant,
    ) -> Result<Verdict, Failure> {
        let Some(milter) = self.slots[i].milter.as_mut() else { return Ok(Verdict::Go) };
        milter.tell(&protocol::macros(cmd::HEADER, id_macro), deadline)?;
        let mut verdict = Answer::Continue;
        for f in &edited.fields {
            let (_, answer) = milter.step(Stage::Header, &protocol::header(&f.name, &f.for_milter()), deadline)?;
            if !matches!(answer, Answer::Continue) {
                verdict = answer;
                break;
            }
        }
        if matches!(verdict, Answer::Continue) {
            (_, verdict) = milter.step(Stage::EndOfHeaders, &protocol::bare(cmd::EOH), deadline)?;
        }
        if matches!(verdict, Answer::Continue) {
            verdict = send_body(milter, edited.body.as_deref(), source, body_start, deadline)?;
        }
        let mut replacing = Replacing::default();
        if matches!(verdict, Answer::Continue | Answer::Skip) {
            milter.tell(&protocol::macros(cmd::BODYEOB, id_macro), deadline)?;
            let (changes, answer) = milter.ask(&protocol::bare(cmd::BODYEOB), deadline)?;
            let allowed = milter.negotiated.actions;
            for change in changes {
                if let protocol::Change::ReplaceBody(piece) = &change
                    && (replacing.size() + piece.len()) as u64 > max_body
                {
                    return Err(Failure::Garbage(protocol::Garbage::Malformed("body larger than the size limit")));
                }
                edited.apply(change, allowed, &mut replacing);
            }
            verdict = answer;
        }
        edited.finish_body(replacing);
        if !edited.refused.is_empty() {
            log::warn!(
                "milter {}: asked for what it did not negotiate, ignored: {}",
                self.slots[i].address,
                edited.refused.join(", ")
            );
            edited.refused.clear();
        }
        self.slots[i].in_message = false;
        Ok(self.verdict(i, verdict, false))
    }

    /// Tells milters that were sent MAIL that the message will not come (RSET, a new MAIL, a
    /// message refused before its end). Never answered.
    pub fn abort(&mut self, deadline: Instant) {
        for i in 0..self.slots.len() {
            if !self.slots[i].in_message {
                continue;
            }
            self.slots[i].in_message = false;
            if let Some(m) = self.slots[i].milter.as_mut()
                && let Err(f) = m.tell(&protocol::bare(cmd::ABORT), deadline)
            {
                let _ = self.fail(i, &f);
            }
        }
    }

    /// The session is over: each milter is told, and the connections close.
    pub fn quit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        for slot in &mut self.slots {
            if let Some(mut m) = slot.milter.take() {
                let _ = m.tell(&protocol::bare(cmd::QUIT), deadline);
            }
        }
    }

    /// Asks each milter in turn about one step; the first that does not let it go decides.
    fn each(
        &mut self,
        stage: Stage,
        command: u8,
        extra: &[(String, String)],
        packet: &[u8],
        deadline: Instant,
        connection: bool,
    ) -> Verdict {
        if let Some(reply) = &self.broken {
            return Verdict::Refuse(reply.clone());
        }
        let macros = (!extra.is_empty()).then(|| protocol::macros(command, extra));
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            let Some(m) = slot.milter.as_mut().filter(|_| slot.done == Done::No) else { continue };
            let told = macros.as_ref().map_or(Ok(()), |packet| m.tell(packet, deadline));
            let asked = told.and_then(|()| m.step(stage, packet, deadline));
            let verdict = match asked {
                Ok((_, answer)) => self.verdict(i, answer, connection),
                Err(f) => match self.fail(i, &f) {
                    Some(v) => v,
                    None => continue,
                },
            };
            if verdict != Verdict::Go {
                return verdict;
            }
        }
        Verdict::Go
    }

    /// What one milter's answer means for the step; an accept leaves it out from here on.
    fn verdict(&mut self, i: usize, answer: Answer, connection: bool) -> Verdict {
        match answer {
            Answer::Accept => {
                self.slots[i].done = if connection { Done::Connection } else { Done::Message };
                Verdict::Go
            }
            Answer::Continue | Answer::Skip | Answer::Progress | Answer::Change(_) | Answer::Negotiated(_) => {
                Verdict::Go
            }
            Answer::Reject => Verdict::Refuse(reject_reply()),
            Answer::Tempfail => Verdict::Refuse(tempfail_reply()),
            Answer::Refuse(reply) => Verdict::Refuse(reply),
            // A discard makes no sense for a connection (libmilter's own rule): it is let go.
            Answer::Discard if connection => Verdict::Go,
            Answer::Discard => Verdict::Discard,
            Answer::Shutdown => Verdict::Refuse(shutdown_reply()),
        }
    }

    /// Milter `i` failed: it is dropped, and its default action decides. `None`: go on
    /// without it (`accept`).
    fn fail(&mut self, i: usize, failure: &Failure) -> Option<Verdict> {
        let slot = &mut self.slots[i];
        slot.milter = None;
        slot.in_message = false;
        let (action, reply) = match self.default {
            MilterDefault::Accept => ("accept", None),
            MilterDefault::Tempfail => ("tempfail", Some(tempfail_reply())),
            MilterDefault::Reject => ("reject", Some(reject_reply())),
        };
        log::warn!("milter {}: {failure}; milter_default_action = {action}", slot.address);
        self.broken = reply.clone();
        reply.map(Verdict::Refuse)
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.quit();
    }
}

/// The body, in chunks: from the source where no milter replaced it yet, else the new one.
fn send_body(
    milter: &mut Milter,
    replaced: Option<&[u8]>,
    source: &dyn Source,
    start: u64,
    deadline: Instant,
) -> Result<Answer, Failure> {
    let mut chunk = vec![0u8; CHUNK];
    let mut at = start;
    let end = replaced.map_or(source.size(), |b| b.len() as u64);
    if replaced.is_some() {
        at = 0;
    }
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
        let n = match replaced {
            Some(body) => {
                chunk[..want].copy_from_slice(&body[at as usize..at as usize + want]);
                want
            }
            None => source.read_at(at, &mut chunk[..want]).map_err(Failure::Down)?,
        };
        if n == 0 {
            return Err(Failure::Down(io::Error::new(io::ErrorKind::UnexpectedEof, "the message is shorter")));
        }
        let (_, answer) = milter.step(Stage::Body, &protocol::packet(cmd::BODY, &chunk[..n]), deadline)?;
        if !matches!(answer, Answer::Continue) {
            return Ok(answer);
        }
        at += n as u64;
    }
    Ok(Answer::Continue)
}

/// The header section at the start of the message and where its body starts; `None` when
/// it runs past `MAX_HEADER` with more to come.
fn read_header(source: &dyn Source) -> io::Result<Option<(Vec<u8>, u64)>> {
    let len = source.size();
    let want = usize::try_from(len).unwrap_or(MAX_HEADER).min(MAX_HEADER);
    let mut head = vec![0u8; want];
    let mut got = 0;
    while got < want {
        let n = source.read_at(got as u64, &mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    head.truncate(got);
    let (_, body_start) = crate::message::Headers::parse(&head);
    let cut = body_start >= head.len() && crate::message::header_end(&head, 0).is_none();
    if cut && (head.len() as u64) < len {
        return Ok(None);
    }
    head.truncate(body_start);
    Ok(Some((head, body_start as u64)))
}
