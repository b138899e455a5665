//! The message as milters see it and change it, without I/O: its header fields in order, the
//! changes asked for at the end of the message applied to them, and what the changes say
//! (a spam mark, a quarantine). The body stays where it is unless a milter replaces it.

use super::protocol::{Change, action};
use crate::message::Headers;

/// One header field: its name and its value as written after the colon (leading space and
/// folding kept, CRLF line ends, no final CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub value: Vec<u8>,
    /// Added or changed by a milter: only such fields can mark the message as spam.
    pub by_milter: bool,
}

impl Field {
    /// The value as a milter is sent it: without the whitespace after the colon and with LF
    /// line ends, as Postfix sends it (no `SMFIP_HDR_LEADSPC`).
    pub fn for_milter(&self) -> Vec<u8> {
        let start = self.value.iter().position(|b| !matches!(b, b' ' | b'\t')).unwrap_or(self.value.len());
        self.value[start..].iter().copied().filter(|&b| b != b'\r').collect()
    }
}

/// What the milters made of a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edited {
    pub fields: Vec<Field>,
    /// A field was added, changed or removed: the header section is written anew.
    pub header_changed: bool,
    /// Where the body starts in the message as it was read.
    pub body_start: u64,
    /// The new body, when a milter replaced it (CRLF line ends).
    pub body: Option<Vec<u8>>,
    /// The new sender (the path as the milter gave it) and its ESMTP parameters.
    pub from: Option<String>,
    pub added_rcpts: Vec<String>,
    pub deleted_rcpts: Vec<String>,
    /// A milter asked for the message to be held, with this reason.
    pub quarantine: Option<String>,
    /// Changes the milter had not asked leave for in its negotiation, ignored.
    pub refused: Vec<&'static str>,
}

/// A body being replaced: the pieces one milter sent so far.
#[derive(Debug, Default)]
pub struct Replacing {
    body: Vec<u8>,
    any: bool,
}

impl Replacing {
    /// The octets gathered so far.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

impl Edited {
    /// The fields of `header` (the message's header section, with or without its blank line).
    pub fn new(header: &[u8]) -> Edited {
        let (headers, _) = Headers::parse(header);
        let fields = headers
            .fields
            .iter()
            .map(|f| Field { name: f.name.to_string(), value: f.raw.to_vec(), by_milter: false })
            .collect();
        Edited { fields, ..Edited::default() }
    }

    /// Applies one change from a milter that negotiated the actions `allowed`; a replaced
    /// body is gathered in `replacing` until the milter's verdict (its pieces come in order).
    pub fn apply(&mut self, change: Change, allowed: u32, replacing: &mut Replacing) {
        let needs = match &change {
            Change::AddHeader { .. } => action::ADD_HEADERS,
            Change::InsertHeader { .. } | Change::ChangeHeader { .. } => action::CHANGE_HEADERS,
            Change::AddRcpt { params: None, .. } => action::ADD_RCPT | action::ADD_RCPT_WITH_ARGS,
            Change::AddRcpt { params: Some(_), .. } => action::ADD_RCPT_WITH_ARGS,
            Change::DeleteRcpt(_) => action::DELETE_RCPT,
            Change::ChangeFrom { .. } => action::CHANGE_FROM,
            Change::ReplaceBody(_) => action::CHANGE_BODY,
            Change::Quarantine(_) => action::QUARANTINE,
        };
        if allowed & needs == 0 {
            self.refused.push(change_name(&change));
            return;
        }
        match change {
            Change::AddHeader { name, value } => match field(&name, &value) {
                Some(f) => {
                    self.fields.push(f);
                    self.header_changed = true;
                }
                None => self.refused.push("a malformed header field"),
            },
            Change::InsertHeader { index, name, value } => match field(&name, &value) {
                Some(f) => {
                    let at = (index as usize).min(self.fields.len());
                    self.fields.insert(at, f);
                    self.header_changed = true;
                }
                None => self.refused.push("a malformed header field"),
            },
            Change::ChangeHeader { index, name, value } => {
                // The index-th field of that name, from 1; an empty value removes it, and a
                // field that is not there is added (as libmilter's smfi_chgheader says).
                let at = self
                    .fields
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.name.eq_ignore_ascii_case(&name))
                    .nth((index.max(1) - 1) as usize)
                    .map(|(i, _)| i);
                match (at, value.is_empty(), field(&name, &value)) {
                    (Some(i), true, _) => {
                        self.fields.remove(i);
                        self.header_changed = true;
                    }
                    (Some(i), false, Some(f)) => {
                        self.fields[i] = Field { name: std::mem::take(&mut self.fields[i].name), ..f };
                        self.header_changed = true;
                    }
                    (None, false, Some(f)) => {
                        self.fields.push(f);
                        self.header_changed = true;
                    }
                    (None, true, _) => {}
                    (_, false, None) => self.refused.push("a malformed header field"),
                }
            }
            Change::AddRcpt { rcpt, .. } => self.added_rcpts.push(rcpt),
            Change::DeleteRcpt(rcpt) => self.deleted_rcpts.push(rcpt),
            Change::ChangeFrom { from, .. } => self.from = Some(from),
            Change::ReplaceBody(piece) => {
                replacing.any = true;
                replacing.body.extend_from_slice(&piece);
            }
            Change::Quarantine(reason) => self.quarantine = Some(reason),
        }
    }

    /// The body a milter replaced, once its verdict is in: the pieces, with CRLF line ends.
    pub fn finish_body(&mut self, replacing: Replacing) {
        if replacing.any {
            self.body = Some(crlf(&replacing.body));
        }
    }

    /// The header section as it goes into the queue file, with its blank line.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in &self.fields {
            out.extend_from_slice(f.name.as_bytes());
            out.push(b':');
            out.extend_from_slice(&f.value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// A milter marked the message as spam: `X-Spam: Yes` (rspamd's milter_headers),
    /// `X-Spam-Flag: YES` (SpamAssassin) or `X-Spam-Status: Yes, ...` (both), added or
    /// changed by a milter. A client's own such field marks nothing.
    pub fn marked_spam(&self) -> bool {
        self.fields.iter().filter(|f| f.by_milter).any(|f| {
            let value = String::from_utf8_lossy(&f.value);
            let value = value.trim_start().to_ascii_lowercase();
            let name = f.name.to_ascii_lowercase();
            match name.as_str() {
                "x-spam" | "x-spam-flag" => value.trim_end() == "yes",
                "x-spam-status" => value.starts_with("yes"),
                _ => false,
            }
        })
    }
}

fn change_name(change: &Change) -> &'static str {
    match change {
        Change::AddHeader { .. } => "add header",
        Change::InsertHeader { .. } => "insert header",
        Change::ChangeHeader { .. } => "change header",
        Change::AddRcpt { .. } => "add recipient",
        Change::DeleteRcpt(_) => "delete recipient",
        Change::ChangeFrom { .. } => "change sender",
        Change::ReplaceBody(_) => "replace body",
        Change::Quarantine(_) => "quarantine",
    }
}

/// A field a milter gave: RFC 5322 §3.6.8 name (printable ASCII but the colon), and a value
/// written after `: ` whose lines end in CRLF and whose continuation lines start with
/// whitespace (§2.2.3: one that does not gets a tab, so no line can end the header section
/// or start a field of its own).
fn field(name: &str, value: &str) -> Option<Field> {
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return None;
    }
    let mut out = vec![b' '];
    for (i, line) in value.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line: Vec<u8> = line.bytes().filter(|&b| b != b'\r' && b != 0).collect();
        if i > 0 {
            if line.iter().all(|b| matches!(b, b' ' | b'\t')) {
                continue; // a blank line would end the header section
            }
            out.extend_from_slice(b"\r\n");
            if !matches!(line.first(), Some(b' ' | b'\t')) {
                out.push(b'\t');
            }
        }
        out.extend_from_slice(&line);
    }
    Some(Field { name: name.to_string(), value: out, by_milter: true })
}

/// `text` with every line ending in CRLF: a bare LF or a bare CR becomes CRLF (RFC 5321
/// §2.3.8: the queue holds CRLF lines only).
pub fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 32);
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u32 = super::super::protocol::OUR_ACTIONS;

    fn edited() -> Edited {
        Edited::new(b"Received: from a\r\n\tby b\r\nFrom: <a@example.org>\r\nSubject: hi\r\nX-Spam: Yes\r\n\r\n")
    }

    fn text(e: &Edited) -> String {
        String::from_utf8(e.header_bytes()).unwrap()
    }

    #[test]
    fn fields_are_read_in_order_and_sent_as_postfix_sends_them() {
        let e = edited();
        let names: Vec<&str> = e.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["Received", "From", "Subject", "X-Spam"]);
        assert_eq!(e.fields[0].for_milter(), b"from a\n\tby b");
        assert_eq!(
            text(&e),
            "Received: from a\r\n\tby b\r\nFrom: <a@example.org>\r\nSubject: hi\r\nX-Spam: Yes\r\n\r\n"
        );
        // The client's own spam mark marks nothing.
        assert!(!e.marked_spam());
    }

    #[test]
    fn header_changes_add_insert_change_and_remove() {
        let mut e = edited();
        let mut r = Replacing::default();
        let change =
            |name: &str, value: &str, index| Change::ChangeHeader { index, name: name.into(), value: value.into() };
        e.apply(Change::AddHeader { name: "X-Rspamd-Action".into(), value: "no action".into() }, ALL, &mut r);
        e.apply(Change::InsertHeader { index: 0, name: "X-Top".into(), value: "1".into() }, ALL, &mut r);
        e.apply(change("subject", "[SPAM] hi", 1), ALL, &mut r);
        e.apply(change("Received", "", 1), ALL, &mut r);
        e.apply(change("X-Missing", "", 1), ALL, &mut r);
        e.apply(change("X-Spam-Status", "Yes, score=20\n\tmore", 1), ALL, &mut r);
        assert!(e.header_changed && e.refused.is_empty());
        assert_eq!(
            text(&e),
            "X-Top: 1\r\nFrom: <a@example.org>\r\nSubject: [SPAM] hi\r\nX-Spam: Yes\r\nX-Rspamd-Action: no action\r\n\
             X-Spam-Status: Yes, score=20\r\n\tmore\r\n\r\n"
        );
        assert!(e.marked_spam());
    }

    #[test]
    fn a_value_cannot_end_the_header_or_start_a_field() {
        let mut e = Edited::new(b"\r\n");
        let mut r = Replacing::default();
        e.apply(Change::AddHeader { name: "X-A".into(), value: "one\r\n\r\nBcc: x@y\nthree\r".into() }, ALL, &mut r);
        e.apply(Change::AddHeader { name: "Bad Name".into(), value: "v".into() }, ALL, &mut r);
        e.apply(Change::AddHeader { name: "X:Y".into(), value: "v".into() }, ALL, &mut r);
        assert_eq!(text(&e), "X-A: one\r\n\tBcc: x@y\r\n\tthree\r\n\r\n");
        assert_eq!(e.refused, ["a malformed header field", "a malformed header field"]);
        let bytes = e.header_bytes();
        let (headers, _) = Headers::parse(&bytes);
        assert_eq!(headers.fields.len(), 1);
    }

    #[test]
    fn spam_marks_as_rspamd_and_spamassassin_write_them() {
        for (name, value, spam) in [
            ("X-Spam", "Yes", true),
            ("X-Spam", "yes ", true),
            ("X-Spam-Flag", "YES", true),
            ("X-Spam-Flag", "NO", false),
            ("X-Spam-Status", "Yes, score=16.50 required=15.00", true),
            ("X-Spam-Status", "No, score=1.2", false),
            ("X-Spam-Level", "***************", false),
            ("X-Yes", "Yes", false),
        ] {
            let mut e = Edited::new(b"\r\n");
            e.apply(Change::AddHeader { name: name.into(), value: value.into() }, ALL, &mut Replacing::default());
            assert_eq!(e.marked_spam(), spam, "{name}: {value}");
        }
    }

    #[test]
    fn changes_not_negotiated_are_ignored_and_named() {
        let mut e = edited();
        let mut r = Replacing::default();
        e.apply(Change::AddHeader { name: "X-A".into(), value: "1".into() }, action::CHANGE_HEADERS, &mut r);
        e.apply(
            Change::AddRcpt { rcpt: "<b@x>".into(), params: Some("NOTIFY=NEVER".into()) },
            action::ADD_RCPT,
            &mut r,
        );
        e.apply(Change::ReplaceBody(b"x".to_vec()), action::ADD_HEADERS, &mut r);
        e.apply(Change::Quarantine("why".into()), action::ADD_HEADERS, &mut r);
        assert_eq!(e.refused, ["add header", "add recipient", "replace body", "quarantine"]);
        assert!(!e.header_changed && e.added_rcpts.is_empty() && e.quarantine.is_none());
        e.finish_body(r);
        assert_eq!(e.body, None);
    }

    #[test]
    fn a_replaced_body_is_its_pieces_with_crlf_lines() {
        let mut e = edited();
        let mut r = Replacing::default();
        e.apply(Change::ReplaceBody(b"one\nt".to_vec()), ALL, &mut r);
        e.apply(Change::ReplaceBody(b"wo\r\nthree\rfour".to_vec()), ALL, &mut r);
        e.apply(Change::DeleteRcpt("<a@x>".into()), ALL, &mut r);
        e.apply(Change::AddRcpt { rcpt: "<b@x>".into(), params: None }, ALL, &mut r);
        e.apply(Change::ChangeFrom { from: "<c@x>".into(), params: None }, ALL, &mut r);
        e.apply(Change::Quarantine("looks bad".into()), ALL, &mut r);
        e.finish_body(r);
        assert_eq!(e.body.as_deref(), Some(&b"one\r\ntwo\r\nthree\r\nfour"[..]));
        assert_eq!(
            (e.deleted_rcpts.as_slice(), e.added_rcpts.as_slice()),
            (&["<a@x>".to_string()][..], &["<b@x>".to_string()][..])
        );
        assert_eq!((e.from.as_deref(), e.quarantine.as_deref()), (Some("<c@x>"), Some("looks bad")));
    }
}
