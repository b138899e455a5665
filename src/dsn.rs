//! Delivery status notifications (RFC 3464, RFC 6522): a pure function of what failed, and when.

use crate::smtp::reply::EnhancedStatus;
use crate::trace::rfc5322_date;

/// Postfix caps returned content near this; only headers are returned here, cut at this size.
const MAX_RETURNED_HEADERS: usize = 50_000;
const MAX_DIAGNOSTIC: usize = 400;

/// What the report says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    /// Still being retried, until the given time (seconds since 1970).
    Delayed {
        retry_until: u64,
    },
}

/// One recipient's line in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientStatus {
    /// `local@domain`, without brackets.
    pub final_recipient: String,
    /// The envelope recipient it was expanded from, when different.
    pub original_recipient: Option<String>,
    /// RFC 3463 status.
    pub status: EnhancedStatus,
    /// The host that answered, when one did.
    pub remote_mta: Option<String>,
    /// The remote reply (`smtp` type) or the local reason.
    pub diagnostic: Diagnostic,
    pub last_attempt: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    Smtp(String),
    Local(String),
}

/// Everything a report needs.
pub struct Report<'a> {
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// The address the report goes to, without brackets.
    pub to: &'a str,
    pub arrived: u64,
    pub now: u64,
    pub action: Action,
    pub recipients: &'a [RecipientStatus],
    /// The original message's header section.
    pub original_headers: &'a [u8],
}

/// The whole report message, CRLF line ends, ready for the spool.
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let boundary = format!("{}.{}/{}", r.queue_id, r.now, r.hostname);
    let subject = match r.action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed { .. } => "Delayed Mail (still being retried)",
    };
    let mut m = String::new();
    m += &format!("From: MAILER-DAEMON@{} (Mail Delivery System)\r\n", r.hostname);
    m += &format!("To: <{}>\r\n", r.to);
    m += &format!("Subject: {subject}\r\n");
    m += &format!("Date: {}\r\n", rfc5322_date(r.now));
    m += &format!("Message-ID: <{}.{}.dsn@{}>\r\n", r.queue_id, r.now, r.hostname);
    m += "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n";
    m += &format!("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n");
    m += "This is a MIME-encapsulated delivery status notification.\r\n\r\n";
    m += &format!(
        "--{boundary}\r\nContent-Description: Notification\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    m += &human_text(r);
    m += &format!(
        "\r\n--{boundary}\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n"
    );
    m += &machine_text(r);
    m += &format!(
        "\r\n--{boundary}\r\nContent-Description: Undelivered message headers\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(&returned_headers(r.original_headers));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn human_text(r: &Report<'_>) -> String {
    let mut t = format!("This is the mail system at {}.\r\n\r\n", r.hostname);
    t += &match r.action {
        Action::Failed => "Your message could not be delivered to the recipients below, for the reasons given.\r\n\
                           It will not be tried again. Its headers are attached.\r\n"
            .to_string(),
        Action::Delayed { retry_until } => format!(
            "Your message has not yet been delivered to the recipients below. Delivery will be\r\n\
             tried again until {}; you need not send it again.\r\n",
            rfc5322_date(retry_until)
        ),
    };
    for rcpt in r.recipients {
        let why = match &rcpt.diagnostic {
            Diagnostic::Smtp(reply) => {
                format!("host {} said: {}", rcpt.remote_mta.as_deref().unwrap_or("?"), clean(reply))
            }
            Diagnostic::Local(reason) => clean(reason),
        };
        t += &format!("\r\n<{}>: {why}\r\n", rcpt.final_recipient);
    }
    t
}

fn machine_text(r: &Report<'_>) -> String {
    let mut t = format!("Reporting-MTA: dns; {}\r\nX-Postern-Queue-ID: {}\r\n", r.hostname, r.queue_id);
    t += &format!("Arrival-Date: {}\r\n", rfc5322_date(r.arrived));
    for rcpt in r.recipients {
        t += &format!("\r\nFinal-Recipient: rfc822; {}\r\n", rcpt.final_recipient);
        if let Some(orig) = &rcpt.original_recipient {
            t += &format!("Original-Recipient: rfc822; {orig}\r\n");
        }
        let action = match r.action {
            Action::Failed => "failed",
            Action::Delayed { .. } => "delayed",
        };
        t += &format!("Action: {action}\r\nStatus: {}\r\n", rcpt.status);
        if let Some(mta) = &rcpt.remote_mta {
            t += &format!("Remote-MTA: dns; {}\r\n", clean(mta));
        }
        t += &match &rcpt.diagnostic {
            Diagnostic::Smtp(reply) => format!("Diagnostic-Code: smtp; {}\r\n", clean(reply)),
            Diagnostic::Local(reason) => format!("Diagnostic-Code: x-postern; {}\r\n", clean(reason)),
        };
        t += &format!("Last-Attempt-Date: {}\r\n", rfc5322_date(rcpt.last_attempt));
        if let Action::Delayed { retry_until } = r.action {
            t += &format!("Will-Retry-Until: {}\r\n", rfc5322_date(retry_until));
        }
    }
    t
}

/// Remote text is untrusted: controls become `?`, and it is cut short (RFC 3464 §2.3.6 quotes it, so it must not carry control characters).
fn clean(text: &str) -> String {
    let mut out: String = text.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if out.len() > MAX_DIAGNOSTIC {
        let mut end = MAX_DIAGNOSTIC;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out += "...";
    }
    out
}

/// The header section up to the blank line, at most MAX_RETURNED_HEADERS, ending in CRLF.
fn returned_headers(headers: &[u8]) -> Vec<u8> {
    let end = headers.windows(4).position(|w| w == b"\r\n\r\n").map_or(headers.len(), |i| i + 2);
    let mut out = headers[..end.min(MAX_RETURNED_HEADERS)].to_vec();
    if !out.ends_with(b"\r\n") {
        if let Some(last_line) = out.iter().rposition(|&b| b == b'\n') {
            out.truncate(last_line + 1);
        } else {
            out.clear();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report<'a>(recipients: &'a [RecipientStatus], headers: &'a [u8], action: Action) -> Report<'a> {
        Report {
            hostname: "mail.example.test",
            queue_id: "ABC",
            to: "alice@example.test",
            arrived: 0,
            now: 3600,
            action,
            recipients,
            original_headers: headers,
        }
    }

    fn failure(rcpt: &str, reply: &str) -> RecipientStatus {
        RecipientStatus {
            final_recipient: rcpt.into(),
            original_recipient: None,
            status: EnhancedStatus(5, 1, 1),
            remote_mta: Some("mx.remote.test".into()),
            diagnostic: Diagnostic::Smtp(reply.into()),
            last_attempt: 3000,
        }
    }

    #[test]
    fn a_failure_report_has_the_three_parts() {
        let rcpts =
            [failure("bob@remote.test", "550 5.1.1 no such user"), failure("carol@remote.test", "550 5.1.1 gone")];
        let text = String::from_utf8(build(&report(&rcpts, b"Subject: hi\r\nFrom: a\r\n\r\nbody\r\n", Action::Failed)))
            .unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(text.contains("Reporting-MTA: dns; mail.example.test\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; carol@remote.test\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\nFrom: a\r\n\r\n--"));
        assert!(!text.contains("body\r\n"), "only headers are returned");
        assert!(text.lines().all(|l| !l.contains('\n')) && !text.replace("\r\n", "").contains('\n'), "bare LF");
    }

    #[test]
    fn a_delay_report_says_until_when() {
        let rcpts = [failure("bob@remote.test", "451 4.3.0 later")];
        let text = String::from_utf8(build(&report(&rcpts, b"", Action::Delayed { retry_until: 432_000 }))).unwrap();
        assert!(
            text.contains("Action: delayed\r\n")
                && text.contains("Will-Retry-Until: Tue, 6 Jan 1970 00:00:00 +0000\r\n")
        );
        assert!(text.contains("Subject: Delayed Mail"));
    }

    #[test]
    fn remote_text_is_cleaned_and_cut() {
        let junk = format!("550 5.1.1 x\u{0}y\u{1b}[31m{}", "z".repeat(3000));
        let rcpts = [failure("bob@remote.test", &junk)];
        let text = String::from_utf8(build(&report(&rcpts, b"", Action::Failed))).unwrap();
        let line = text.lines().find(|l| l.starts_with("Diagnostic-Code:")).unwrap();
        assert!(line.contains("x?y?[31m") && line.len() < 500, "{}", line.len());
    }
}
