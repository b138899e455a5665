//! The queue as the operator reads it: each message's state, age, size, sender, the recipients
//! still owed, its attempts, its next try and its last error. `summarize` is pure (envelope and
//! delivery log in, an `Entry` out); the three shapes (`table`, `mailq`, `json`) are too.

use std::fmt::Write as _;

use crate::schedule::{self, RetryPolicy};
use crate::spool::log::{Attempt, Outcome, Recipient, read_log};
use crate::spool::manage::Found;
use crate::spool::{Envelope, QueueId, Spool};
use crate::trace;

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: QueueId,
    pub state: Found,
    pub arrived: u64,
    pub size: u64,
    /// `<addr>`, or `<>`.
    pub from: String,
    /// Recipients without a final outcome, as `<addr>`.
    pub pending: Vec<String>,
    /// Delivery attempts so far (runs that tried at least one recipient).
    pub attempts: usize,
    /// When the next run will try it; `None` when it is due now (or held).
    pub next_try: Option<u64>,
    /// The last temporary failure: status, where, and what was said.
    pub last_error: Option<String>,
}

/// The entry of one message from its envelope and delivery log.
pub fn summarize(
    id: QueueId,
    state: Found,
    envelope: &Envelope,
    log: &[Attempt],
    retry: &RetryPolicy,
    now: u64,
) -> Entry {
    let about_recipients = || log.iter().filter(|a| a.recipient != Recipient::Message);
    let mut pending: Vec<Recipient> = Vec::new();
    if about_recipients().next().is_none() {
        pending = envelope.rcpts.iter().map(Recipient::of_path).collect();
    } else {
        for a in about_recipients() {
            let done = about_recipients().any(|b| b.recipient == a.recipient && b.outcome.is_final());
            if !done && !pending.contains(&a.recipient) {
                pending.push(a.recipient.clone());
            }
        }
    }
    let mut times: Vec<u64> = about_recipients().map(|a| a.time).collect();
    times.dedup();
    let plan = schedule::plan(retry, envelope.arrived, &pending, log, now);
    let next_try = match state {
        Found::Held => None,
        _ if !plan.due.is_empty() || !plan.expired.is_empty() => None,
        _ => plan.next_attempt,
    };
    let last_error = log.iter().rev().find(|a| a.outcome == Outcome::Deferred).map(|a| {
        let relay = a.relay.to_string();
        if relay == "-" {
            format!("{} {}", a.status_text(), a.text)
        } else {
            format!("{} {relay}: {}", a.status_text(), a.text)
        }
    });
    Entry {
        id,
        state,
        arrived: envelope.arrived,
        size: envelope.size,
        from: envelope.from.to_string(),
        pending: pending.iter().map(ToString::to_string).collect(),
        attempts: times.len(),
        next_try,
        last_error,
    }
}

/// Every message in the spool (new/, cur/, hold/), oldest first. A file that cannot be read
/// is listed with what its name says and the reason in `last_error`.
pub fn list(spool: &Spool, retry: &RetryPolicy, now: u64) -> Vec<Entry> {
    spool
        .all()
        .into_iter()
        .map(|(state, id)| match spool.peek(state, &id, 0) {
            Ok((envelope, _)) => {
                let log = read_log(&spool.log_path(&id)).unwrap_or_default();
                summarize(id, state, &envelope, &log, retry, now)
            }
            Err(e) => Entry {
                arrived: id.arrival_secs(),
                id,
                state,
                size: 0,
                from: String::new(),
                pending: Vec::new(),
                attempts: 0,
                next_try: None,
                last_error: Some(format!("unreadable: {e}")),
            },
        })
        .collect()
}

/// One line per message (and its last error below it), for `postern-queue list`.
pub fn table(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "the queue is empty\n".to_string();
    }
    let mut out = String::from(
        "ID                       STATE    ARRIVED (UTC)        SIZE     TRIES  NEXT TRY (UTC)       FROM -> RECIPIENTS LEFT\n",
    );
    for e in entries {
        let next = match (e.state, e.next_try) {
            (Found::Held, _) => "held".to_string(),
            (_, None) => "now".to_string(),
            (_, Some(t)) => trace::iso_time(t),
        };
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<20} {:<8} {:<6} {:<20} {} -> {}",
            e.id.as_str(),
            e.state.name(),
            trace::iso_time(e.arrived),
            e.size,
            e.attempts,
            next,
            e.from,
            e.pending.join(", ")
        );
        if let Some(err) = &e.last_error {
            let _ = writeln!(out, "    last error: {err}");
        }
    }
    out
}

/// The traditional `mailq` shape: ID (`!` when held), size, arrival, sender; the reason in
/// parentheses; each recipient left, indented; a total.
pub fn mailq(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "Mail queue is empty\n".to_string();
    }
    let mut out = String::from("-Queue ID--------------- --Size-- ----Arrival Time---- -Sender/Recipient-------\n");
    for e in entries {
        let mark = if e.state == Found::Held { "!" } else { "" };
        let sender = e.from.trim_start_matches('<').trim_end_matches('>');
        let sender = if sender.is_empty() { "MAILER-DAEMON" } else { sender };
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:<20} {sender}",
            format!("{}{mark}", e.id),
            e.size,
            trace::mailq_time(e.arrived)
        );
        if let Some(err) = &e.last_error {
            let _ = writeln!(out, "({err})");
        }
        for r in &e.pending {
            let _ = writeln!(out, "{:55}{}", "", r.trim_start_matches('<').trim_end_matches('>'));
        }
        out.push('\n');
    }
    let kbytes = entries.iter().map(|e| e.size).sum::<u64>().div_ceil(1024);
    let n = entries.len();
    let _ = writeln!(out, "-- {kbytes} Kbytes in {n} Request{}.", if n == 1 { "" } else { "s" });
    out
}

/// A JSON array, one object per message (`postern-queue list --json`).
pub fn json(entries: &[Entry]) -> String {
    let mut out = String::from("[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let pending: Vec<String> = e.pending.iter().map(|r| quote(r)).collect();
        let _ = write!(
            out,
            "\n  {{\"id\": {}, \"state\": {}, \"arrived\": {}, \"size\": {}, \"from\": {}, \"recipients\": [{}], \
             \"attempts\": {}, \"next_try\": {}, \"last_error\": {}}}",
            quote(e.id.as_str()),
            quote(e.state.name()),
            e.arrived,
            e.size,
            quote(&e.from),
            pending.join(", "),
            e.attempts,
            e.next_try.map_or_else(|| "null".to_string(), |t| t.to_string()),
            e.last_error.as_deref().map_or_else(|| "null".to_string(), quote)
        );
    }
    out.push_str(if entries.is_empty() { "]\n" } else { "\n]\n" });
    out
}

/// A JSON string (RFC 8259 §7).
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{ForwardPath, ReversePath};
    use crate::smtp::command::BodyType;
    use crate::spool::log::parse_log;
    use std::time::Duration;

    fn retry() -> RetryPolicy {
        RetryPolicy {
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            delay_warning_time: Duration::ZERO,
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            arrived: 1_796_290_991,
            client: None,
            helo: None,
            protocol: "ESMTP".into(),
            body: BodyType::SevenBit,
            smtputf8: false,
            auth: None,
            submitted: false,
            quarantine: false,
            from: ReversePath::parse(b"alice@example.test").unwrap(),
            rcpts: vec![
                ForwardPath::parse(b"bob@remote.test").unwrap(),
                ForwardPath::parse(b"carol@example.test").unwrap(),
            ],
            size: 2048,
            check: None,
        }
    }

    fn id() -> QueueId {
        QueueId::parse("661B79675EB100021040000").unwrap()
    }

    #[test]
    fn a_new_message_owes_every_recipient_and_is_due_now() {
        let e = summarize(id(), Found::New, &envelope(), &[], &retry(), 1_796_291_000);
        assert_eq!(e.pending, ["<bob@remote.test>", "<carol@example.test>"]);
        assert_eq!((e.attempts, e.next_try, e.last_error.as_deref()), (0, None, None));
    }

    #[test]
    fn a_deferred_message_shows_its_reason_and_its_next_try() {
        let log = parse_log(
            "1796291000 deferred <bob@remote.test> 4.4.1 mx.remote.test[192.0.2.7]:25 connection%20refused\n\
             1796291000 sent <carol@example.test> 2.0.0 maildir ok\n",
        );
        let e = summarize(id(), Found::Waiting, &envelope(), &log, &retry(), 1_796_291_010);
        assert_eq!(e.pending, ["<bob@remote.test>"]);
        assert_eq!(e.attempts, 1);
        assert_eq!(e.next_try, Some(1_796_291_300));
        assert_eq!(e.last_error.as_deref(), Some("4.4.1 mx.remote.test[192.0.2.7]:25: connection refused"));
        let text = mailq(std::slice::from_ref(&e));
        assert!(text.contains("661B79675EB100021040000      2048 Thu Dec  3 09:43:11  alice@example.test\n"), "{text}");
        assert!(text.contains("\n(4.4.1 mx.remote.test[192.0.2.7]:25: connection refused)\n"), "{text}");
        assert!(text.ends_with("bob@remote.test\n\n-- 2 Kbytes in 1 Request.\n"), "{text}");
        let table = table(std::slice::from_ref(&e));
        assert!(table.contains(" waiting  2026-12-03 09:43:11  2048     1      2026-12-03 09:48:20 "), "{table}");
        let json = json(&[e]);
        assert!(
            json.contains(
                "\"next_try\": 1796291300, \"last_error\": \"4.4.1 mx.remote.test[192.0.2.7]:25: connection refused\""
            ),
            "{json}"
        );
    }

    #[test]
    fn held_mail_is_marked_and_an_empty_queue_says_so() {
        let e = summarize(id(), Found::Held, &envelope(), &[], &retry(), 0);
        assert!(mailq(std::slice::from_ref(&e)).contains("661B79675EB100021040000!"));
        assert!(table(&[e]).contains(" held "));
        assert_eq!(mailq(&[]), "Mail queue is empty\n");
        assert_eq!(json(&[]), "[]\n");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
