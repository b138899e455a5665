//! A message in a spool draft as the milters see it at its end, and their verdict and
//! changes made to the draft before its commit: the same for a session's message and for one
//! from postern-sendmail.

use std::io;
use std::time::Instant;

use super::chain::{Chain, Source, Verdict};
use super::edit::Edited;
use super::path_text;
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::spool::{Draft, Envelope, Piece, SpoolError};

/// A draft read as the milters read a message.
struct DraftSource<'d, 'a>(&'d Draft<'a>);

impl Source for DraftSource<'_, '_> {
    fn size(&self) -> u64 {
        self.0.message_len()
    }

    fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_message_at(at, buf)
    }
}

/// What becomes of a message the milters have seen.
pub enum Fate {
    /// Committed into the queue (with the envelope now in the draft).
    Queue,
    /// Committed into the hold queue: a milter quarantined it, for this reason.
    Hold(String),
    /// Answered 250 and thrown away (a milter's discard, or no recipient left); why.
    Discard(&'static str),
    /// Refused with the milter's reply.
    Refuse(crate::smtp::reply::Reply),
}

/// Sends the draft's message to the milters still asking about it, and makes their changes:
/// to the envelope (sender, recipients, Junk for spam) and to the message in the draft.
pub fn end_of_message(
    chain: &mut Chain,
    draft: &mut Draft<'_>,
    mut envelope: Envelope,
    max_size: u64,
    deadline: Instant,
) -> Result<Fate, SpoolError> {
    let id = draft.id().to_string();
    let original = envelope.clone();
    let (verdict, edited) = chain.message(&id, &DraftSource(draft), max_size, deadline);
    match verdict {
        Verdict::Refuse(reply) => return Ok(Fate::Refuse(reply)),
        Verdict::Discard => return Ok(Fate::Discard("milter triggers DISCARD action")),
        Verdict::Go => {}
    }
    if let Some(from) = &edited.from {
        match ReversePath::parse(path_text(from).as_bytes()).ok() {
            Some(path) => envelope.from = path,
            None => log::warn!("{id}: a milter's new sender {from:?} is not a path; kept {}", envelope.from),
        }
    }
    for gone in &edited.deleted_rcpts {
        envelope.rcpts.retain(|r| !path_text(&r.to_string()).eq_ignore_ascii_case(path_text(gone)));
    }
    for added in &edited.added_rcpts {
        match ForwardPath::parse(path_text(added).as_bytes()).ok() {
            Some(path) if !envelope.rcpts.contains(&path) => envelope.rcpts.push(path),
            Some(_) => {}
            None => log::warn!("{id}: a milter's new recipient {added:?} is not a path; not added"),
        }
    }
    if envelope.rcpts.is_empty() {
        return Ok(Fate::Discard("the milters left no recipient"));
    }
    if edited.marked_spam() {
        envelope.quarantine = true;
    }
    if edited.header_changed || edited.body.is_some() || envelope != original {
        rewrite(draft, &envelope, &edited)?;
    }
    Ok(match edited.quarantine {
        Some(reason) => Fate::Hold(reason),
        None => Fate::Queue,
    })
}

/// The draft with the milters' header section and body, when they changed either, and the
/// new envelope in any case.
fn rewrite(draft: &mut Draft<'_>, envelope: &Envelope, edited: &Edited) -> Result<(), SpoolError> {
    let len = draft.message_len();
    let header = edited.header_changed.then(|| edited.header_bytes());
    let head = match &header {
        Some(h) => Piece::New(h),
        None => Piece::Old(0, edited.body_start.min(len)),
    };
    let body = match &edited.body {
        Some(b) => Piece::New(b),
        None => Piece::Old(edited.body_start.min(len), len),
    };
    draft.replace_message(envelope, &[head, body])
}
