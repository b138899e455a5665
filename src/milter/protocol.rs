//! The milter protocol, version 6, as an MTA speaks it (Sendmail's libmilter, `mfdef.h`;
//! what Postfix sends, MILTER_README): packets built and replies read as bytes, no I/O.
//!
//! Every packet is a 32-bit length in network order (counting the command octet), a command
//! octet, then its data: NUL-terminated strings, 32-bit numbers in network order.

use crate::smtp::reply::{self, Reply};
use std::net::IpAddr;

/// The protocol version we speak (`SMFI_PROT_VERSION`).
pub const VERSION: u32 = 6;

/// The largest packet we read: a body chunk is at most 65,535 octets (`MILTER_CHUNK_SIZE`);
/// a header field or a reply is far less. A longer length is garbage.
pub const MAX_PACKET: usize = 1 << 20;

/// The most body octets one BODY packet carries (`MILTER_CHUNK_SIZE`).
pub const CHUNK: usize = 65_535;

/// Commands, MTA to milter (`SMFIC_*`).
pub mod cmd {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
    pub const UNKNOWN: u8 = b'U';
}

/// What a milter may do to a message (`SMFIF_*`), offered in the negotiation.
pub mod action {
    pub const ADD_HEADERS: u32 = 0x01;
    pub const CHANGE_BODY: u32 = 0x02;
    pub const ADD_RCPT: u32 = 0x04;
    pub const DELETE_RCPT: u32 = 0x08;
    pub const CHANGE_HEADERS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHANGE_FROM: u32 = 0x40;
    pub const ADD_RCPT_WITH_ARGS: u32 = 0x80;
    pub const SET_MACROS: u32 = 0x100;
}

/// Steps a milter may ask not to be sent, or not to answer (`SMFIP_*`).
pub mod step {
    pub const NO_CONNECT: u32 = 0x01;
    pub const NO_HELO: u32 = 0x02;
    pub const NO_MAIL: u32 = 0x04;
    pub const NO_RCPT: u32 = 0x08;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADERS: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    pub const NO_REPLY_HEADER: u32 = 0x80;
    pub const NO_UNKNOWN: u32 = 0x100;
    pub const NO_DATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const REJECTED_RCPT: u32 = 0x800;
    pub const NO_REPLY_CONNECT: u32 = 0x1000;
    pub const NO_REPLY_HELO: u32 = 0x2000;
    pub const NO_REPLY_MAIL: u32 = 0x4000;
    pub const NO_REPLY_RCPT: u32 = 0x8000;
    pub const NO_REPLY_DATA: u32 = 0x10000;
    pub const NO_REPLY_UNKNOWN: u32 = 0x20000;
    pub const NO_REPLY_EOH: u32 = 0x40000;
    pub const NO_REPLY_BODY: u32 = 0x80000;
    pub const HEADER_LEADING_SPACE: u32 = 0x100000;
}

/// Everything we can do: every action, and every step left out or left unanswered, except
/// asking for rejected recipients (we send a milter the recipients we accepted only) and
/// header values with their leading space (we send them without, as Postfix does).
pub const OUR_ACTIONS: u32 = 0x1FF;
pub const OUR_STEPS: u32 = 0x1F_FFFF & !step::REJECTED_RCPT & !step::HEADER_LEADING_SPACE;

/// One packet: its length, its command, its data.
pub fn packet(command: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    out.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
    out.push(command);
    out.extend_from_slice(data);
    out
}

fn strings(parts: &[&[u8]]) -> Vec<u8> {
    let mut data = Vec::new();
    for part in parts {
        // A NUL inside would end the string early and shift every field after it.
        data.extend(part.iter().map(|&b| if b == 0 { b' ' } else { b }));
        data.push(0);
    }
    data
}

/// The negotiation we open with: our version, the actions we allow, the steps we can leave out.
pub fn negotiate() -> Vec<u8> {
    let mut data = Vec::with_capacity(12);
    for n in [VERSION, OUR_ACTIONS, OUR_STEPS] {
        data.extend_from_slice(&n.to_be_bytes());
    }
    packet(cmd::OPTNEG, &data)
}

/// Macros for the step `command` (`D`): name and value pairs, sent before it, never answered.
pub fn macros<N: AsRef<str>, V: AsRef<str>>(command: u8, pairs: &[(N, V)]) -> Vec<u8> {
    let mut data = vec![command];
    for (name, value) in pairs {
        data.extend(strings(&[name.as_ref().as_bytes(), value.as_ref().as_bytes()]));
    }
    packet(cmd::MACRO, &data)
}

/// The client: its name (`[ADDR]` when it has none), and its address and port; `None` for a
/// client with no address (a local submission: family `L`, no port).
pub fn connect(name: &str, peer: Option<(IpAddr, u16)>) -> Vec<u8> {
    let mut data = strings(&[name.as_bytes()]);
    match peer {
        Some((ip, port)) => {
            let ip = ip.to_canonical();
            data.push(if ip.is_ipv4() { b'4' } else { b'6' });
            data.extend_from_slice(&port.to_be_bytes());
            data.extend(strings(&[ip.to_string().as_bytes()]));
        }
        None => {
            data.push(b'L');
            data.extend_from_slice(&0u16.to_be_bytes());
            data.extend(strings(&[b"localhost"]));
        }
    }
    packet(cmd::CONNECT, &data)
}

pub fn helo(name: &str) -> Vec<u8> {
    packet(cmd::HELO, &strings(&[name.as_bytes()]))
}

/// `MAIL FROM`: the path in angle brackets, then each ESMTP parameter.
pub fn mail(path: &str, params: &[String]) -> Vec<u8> {
    packet(cmd::MAIL, &path_and_params(path, params))
}

/// `RCPT TO`: the path in angle brackets, then each ESMTP parameter.
pub fn rcpt(path: &str, params: &[String]) -> Vec<u8> {
    packet(cmd::RCPT, &path_and_params(path, params))
}

fn path_and_params(path: &str, params: &[String]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = vec![path.as_bytes()];
    parts.extend(params.iter().map(|p| p.as_bytes()));
    strings(&parts)
}

/// One header field: its name, and its value without the space after the colon and without
/// the final CRLF, folding kept.
pub fn header(name: &str, value: &[u8]) -> Vec<u8> {
    packet(cmd::HEADER, &strings(&[name.as_bytes(), value]))
}

/// Commands without data: DATA, end of headers, end of body, abort, quit.
pub fn bare(command: u8) -> Vec<u8> {
    packet(command, &[])
}

/// Body chunks of at most `CHUNK` octets each.
pub fn body(text: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    text.chunks(CHUNK).map(|chunk| packet(cmd::BODY, chunk))
}

/// The steps of a transaction a milter may ask to be left out of, or not to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Helo,
    Mail,
    Rcpt,
    Data,
    Header,
    EndOfHeaders,
    Body,
    Unknown,
}

impl Stage {
    /// The negotiation's bits for this step: left out, and sent but not answered.
    pub fn bits(self) -> (u32, u32) {
        match self {
            Stage::Connect => (step::NO_CONNECT, step::NO_REPLY_CONNECT),
            Stage::Helo => (step::NO_HELO, step::NO_REPLY_HELO),
            Stage::Mail => (step::NO_MAIL, step::NO_REPLY_MAIL),
            Stage::Rcpt => (step::NO_RCPT, step::NO_REPLY_RCPT),
            Stage::Data => (step::NO_DATA, step::NO_REPLY_DATA),
            Stage::Header => (step::NO_HEADERS, step::NO_REPLY_HEADER),
            Stage::EndOfHeaders => (step::NO_EOH, step::NO_REPLY_EOH),
            Stage::Body => (step::NO_BODY, step::NO_REPLY_BODY),
            Stage::Unknown => (step::NO_UNKNOWN, step::NO_REPLY_UNKNOWN),
        }
    }
}

/// What the milter answered the negotiation with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    /// The actions it may take: those it asked for, within ours.
    pub actions: u32,
    /// The steps it asked us to leave out or not to wait for, within ours.
    pub steps: u32,
    /// Macros it asked for, by the step they go with (v6 `SMFIR_SETSYMLIST` lists).
    pub macros: Vec<(u32, String)>,
}

impl Negotiated {
    pub fn leaves_out(&self, step: u32) -> bool {
        self.steps & step != 0
    }

    pub fn may(&self, action: u32) -> bool {
        self.actions & action != 0
    }
}

/// A change to the message a milter asks for at the end of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Appended to the header section.
    AddHeader {
        name: String,
        value: String,
    },
    /// Inserted before the `index`th field (0: at the top).
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// The `index`th (from 1) field of that name changed; an empty value removes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    AddRcpt {
        rcpt: String,
        params: Option<String>,
    },
    DeleteRcpt(String),
    ChangeFrom {
        from: String,
        params: Option<String>,
    },
    /// A piece of the new body; the pieces, in order, replace it.
    ReplaceBody(Vec<u8>),
    /// Held for the operator, with the milter's reason.
    Quarantine(String),
}

/// One reply from a milter.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Negotiated(Negotiated),
    /// Take the message (or the recipient) and ask this milter nothing more about it.
    Accept,
    Continue,
    /// Refuse, with the default text (`550 5.7.1 Command rejected` and its kind).
    Reject,
    /// Refuse for now (`451 4.7.1 Service unavailable - try again later`).
    Tempfail,
    /// Take the message and throw it away.
    Discard,
    /// Refuse with this reply (a 4xx or 5xx).
    Refuse(Reply),
    /// Drop the connection (`421`).
    Shutdown,
    /// Still working: wait on.
    Progress,
    /// No more body chunks wanted.
    Skip,
    Change(Change),
}

/// Why a milter's reply cannot be used: the milter gets `milter_default_action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garbage {
    Length(u32),
    Unknown(u8),
    Malformed(&'static str),
}

impl std::fmt::Display for Garbage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Garbage::Length(n) => write!(f, "a packet of {n} octets"),
            Garbage::Unknown(c) => write!(f, "an unknown reply {:?}", char::from(*c)),
            Garbage::Malformed(what) => write!(f, "a malformed {what}"),
        }
    }
}

/// Splits whole packets off the front of a byte stream.
#[derive(Default)]
pub struct Packets {
    buf: Vec<u8>,
}

impl Packets {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole packet (command and data), `None` until one is in.
    pub fn next_packet(&mut self) -> Result<Option<(u8, Vec<u8>)>, Garbage> {
        let Some(head) = self.buf.first_chunk::<4>() else { return Ok(None) };
        let len = u32::from_be_bytes(*head);
        if len == 0 || len as usize > MAX_PACKET {
            return Err(Garbage::Length(len));
        }
        let end = 4 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let command = self.buf[4];
        let data = self.buf[5..end].to_vec();
        self.buf.drain(..end);
        Ok(Some((command, data)))
    }
}

/// Reads one reply packet.
pub fn answer(command: u8, data: &[u8]) -> Result<Answer, Garbage> {
    let mut fields = Fields(data);
    Ok(match command {
        b'O' => {
            let version = fields.number("negotiation")?;
            let actions = fields.number("negotiation")? & OUR_ACTIONS;
            let steps = fields.number("negotiation")? & OUR_STEPS;
            let mut macros = Vec::new();
            while !fields.0.is_empty() {
                let stage = fields.number("macro list")?;
                macros.push((stage, fields.string("macro list")?));
            }
            Answer::Negotiated(Negotiated { version, actions, steps, macros })
        }
        b'a' => Answer::Accept,
        b'c' => Answer::Continue,
        b'r' => Answer::Reject,
        b't' => Answer::Tempfail,
        b'd' => Answer::Discard,
        b'4' | b'f' => Answer::Shutdown,
        b'p' => Answer::Progress,
        b's' => Answer::Skip,
        b'y' => Answer::Refuse(refusal(&fields.string("reply")?)?),
        b'h' => {
            let name = fields.name()?;
            Answer::Change(Change::AddHeader { name, value: fields.string("header value")? })
        }
        b'i' | b'm' => {
            let index = fields.number("header index")?;
            let (name, value) = (fields.name()?, fields.string("header value")?);
            Answer::Change(if command == b'i' {
                Change::InsertHeader { index, name, value }
            } else {
                Change::ChangeHeader { index, name, value }
            })
        }
        b'+' => Answer::Change(Change::AddRcpt { rcpt: fields.string("recipient")?, params: None }),
        b'2' => {
            let rcpt = fields.string("recipient")?;
            let params = fields.optional_string();
            Answer::Change(Change::AddRcpt { rcpt, params })
        }
        b'-' => Answer::Change(Change::DeleteRcpt(fields.string("recipient")?)),
        b'e' => {
            let from = fields.string("sender")?;
            let params = fields.optional_string();
            Answer::Change(Change::ChangeFrom { from, params })
        }
        b'b' => Answer::Change(Change::ReplaceBody(data.to_vec())),
        b'q' => Answer::Change(Change::Quarantine(fields.optional_string().unwrap_or_default())),
        other => return Err(Garbage::Unknown(other)),
    })
}

/// `SMFIR_REPLYCODE`: a whole SMTP reply (lines joined by CRLF), which must refuse: 4xx or 5xx.
fn refusal(text: &str) -> Result<Reply, Garbage> {
    let mut bytes = text.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
    bytes.extend_from_slice(b"\r\n");
    match reply::parse_reply(&bytes) {
        reply::Parsed::Reply(r, used) if used == bytes.len() && (400..600).contains(&r.code()) => Ok(r),
        _ => Err(Garbage::Malformed("reply code")),
    }
}

/// The data of a reply, read field by field.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn number(&mut self, what: &'static str) -> Result<u32, Garbage> {
        let (n, rest) = self.0.split_first_chunk::<4>().ok_or(Garbage::Malformed(what))?;
        self.0 = rest;
        Ok(u32::from_be_bytes(*n))
    }

    /// A NUL-terminated string (text that is not UTF-8 is read lossily).
    fn string(&mut self, what: &'static str) -> Result<String, Garbage> {
        let end = self.0.iter().position(|&b| b == 0).ok_or(Garbage::Malformed(what))?;
        let s = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    fn optional_string(&mut self) -> Option<String> {
        if self.0.is_empty() { None } else { self.string("").ok().filter(|s| !s.is_empty()) }
    }

    /// A header field name (RFC 5322 §3.6.8: printable ASCII but the colon).
    fn name(&mut self) -> Result<String, Garbage> {
        let name = self.string("header name")?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(Garbage::Malformed("header name"));
        }
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_a_length_a_command_and_data() {
        assert_eq!(bare(cmd::QUIT), b"\0\0\0\x01Q");
        assert_eq!(helo("mx.test"), b"\0\0\0\x09Hmx.test\0");
        assert_eq!(header("Subject", b"hi\r\n there"), b"\0\0\0\x14LSubject\0hi\r\n there\0");
        assert_eq!(
            connect("mx.test", Some(("192.0.2.1".parse().unwrap(), 25))),
            b"\0\0\0\x16Cmx.test\0\x34\0\x19192.0.2.1\0"
        );
        assert_eq!(
            mail("<a@b.test>", &["BODY=8BITMIME".to_string()]),
            b"\0\0\0\x1aM<a@b.test>\0BODY=8BITMIME\0".to_vec()
        );
        assert_eq!(
            macros(cmd::CONNECT, &[("j", "mx"), ("{daemon_name}", "postern")]),
            b"\0\0\0\x1dDCj\0mx\0{daemon_name}\0postern\0"
        );
        let mut neg = negotiate();
        assert_eq!(neg.drain(..5).as_slice(), b"\0\0\0\x0dO");
        assert_eq!(&neg[..4], &6u32.to_be_bytes());
        let chunks: Vec<_> = body(&vec![b'x'; CHUNK + 1]).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1], b"\0\0\0\x02Bx");
        // A NUL cannot cut a field short.
        assert_eq!(helo("a\0b"), b"\0\0\0\x05Ha b\0");
    }

    #[test]
    fn replies_read_and_garbage_is_named() {
        let mut packets = Packets::default();
        packets.push(b"\0\0\0\x01c\0\0\0\x0dhX-Spam\0Yes\0\0\0");
        assert_eq!(packets.next_packet(), Ok(Some((b'c', vec![]))));
        let (c, d) = packets.next_packet().unwrap().unwrap();
        assert_eq!(answer(c, &d), Ok(Answer::Change(Change::AddHeader { name: "X-Spam".into(), value: "Yes".into() })));
        assert_eq!(packets.next_packet(), Ok(None), "three octets are not a length yet");
        packets.push(b"\x05");
        assert_eq!(packets.next_packet(), Ok(None), "a whole length, not the packet");
        let mut huge = Packets::default();
        huge.push(&u32::MAX.to_be_bytes());
        assert_eq!(huge.next_packet(), Err(Garbage::Length(u32::MAX)));
        let mut empty = Packets::default();
        empty.push(&[0, 0, 0, 0]);
        assert_eq!(empty.next_packet(), Err(Garbage::Length(0)));

        let Ok(Answer::Refuse(r)) = answer(b'y', b"554 5.7.1 Gtube pattern\0") else { panic!() };
        assert_eq!((r.code(), r.lines()[0].as_str()), (554, "Gtube pattern"));
        let Ok(Answer::Refuse(r)) = answer(b'y', b"451-4.7.1 one\r\n451 4.7.1 two\0") else { panic!() };
        assert_eq!(r.lines().len(), 2);
        assert_eq!(answer(b'y', b"250 2.0.0 fine\0"), Err(Garbage::Malformed("reply code")), "not a refusal");
        assert_eq!(answer(b'y', b"554 no NUL"), Err(Garbage::Malformed("reply")));
        assert_eq!(answer(b'h', b"Bad:Name\0v\0"), Err(Garbage::Malformed("header name")));
        assert_eq!(answer(b'm', b"\0\0"), Err(Garbage::Malformed("header index")));
        assert_eq!(
            answer(b'm', b"\0\0\0\x01X-Spam\0\0"),
            Ok(Answer::Change(Change::ChangeHeader { index: 1, name: "X-Spam".into(), value: String::new() }))
        );
        assert_eq!(answer(b'Z', b""), Err(Garbage::Unknown(b'Z')));
        assert_eq!(answer(b'q', b"spam\0"), Ok(Answer::Change(Change::Quarantine("spam".into()))));
        assert_eq!(
            answer(b'2', b"<x@y.test>\0\0"),
            Ok(Answer::Change(Change::AddRcpt { rcpt: "<x@y.test>".into(), params: None }))
        );
    }

    #[test]
    fn the_negotiation_keeps_what_both_sides_can_do() {
        let mut data = Vec::new();
        for n in [6u32, 0xFFFF_FFFF, 0xFFFF_FFFF, 1] {
            data.extend_from_slice(&n.to_be_bytes());
        }
        data.extend_from_slice(b"{rcpt_addr} i\0");
        let Ok(Answer::Negotiated(n)) = answer(b'O', &data) else { panic!() };
        assert_eq!((n.version, n.actions, n.steps), (6, OUR_ACTIONS, OUR_STEPS));
        assert_eq!(n.macros, vec![(1, "{rcpt_addr} i".to_string())]);
        assert!(n.leaves_out(step::NO_REPLY_HEADER) && !n.leaves_out(step::REJECTED_RCPT));
        assert_eq!(answer(b'O', &data[..7]), Err(Garbage::Malformed("negotiation")));
    }
}
