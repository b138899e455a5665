//! What a delivery error means for a recipient, decided in one place: sent, deferred or
//! bounced, with an RFC 3463 status and the text for the log and the report.
//!
//! The rule: a server's reply decides by its class (RFC 5321 §4.2.1: 2xx done, 4xx try
//! again, 5xx do not), with the server's enhanced code when it gave one that agrees, else
//! `class.0.0`. Everything that is not a reply is temporary unless it can never succeed:
//! a domain that does not exist, a null MX, a loop, an unknown user, a message over the
//! server's declared size, an SMTPUTF8 message for a server without it.

use std::net::IpAddr;

use crate::alias::ExpandError;
use crate::client::ClientError;
use crate::dns::RouteError;
use crate::maildir::MaildirError;
use crate::smtp::client::SmtpError;
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::spool::log::{Attempt, Outcome, Recipient, Where};

/// Everything a delivery step can end in, success included.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// A server's reply about this recipient: to RCPT, or after the final dot.
    Reply(&'a Reply),
    /// No session could be had with any of the destination's servers.
    Connect(&'a ClientError),
    /// The session failed during the transaction, for every recipient in it.
    Transaction(&'a ClientError),
    /// The domain has no usable server.
    Route(&'a RouteError, &'a str),
    /// The relayhost is not configured or its name does not resolve.
    Relayhost(&'a str),
    /// A copy that must be DKIM-signed, whose key cannot be used.
    Signing(&'a str),
    /// An address literal that is this host (RFC 5321 §5.1).
    LiteralLoop(IpAddr),
    /// The domain's TLS policy allows none of its servers (MTA-STS enforce, RFC 8461 §5).
    TlsPolicy(&'a str),
    /// Written into the maildir, at this path.
    Delivered(&'a str),
    Maildir(&'a MaildirError),
    Alias(&'a ExpandError),
}

/// The outcome, its status, and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub status: EnhancedStatus,
    pub text: String,
}

const fn es(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
    EnhancedStatus::new(class, subject, detail)
}

fn verdict(status: EnhancedStatus, text: impl Into<String>) -> Verdict {
    let outcome = match status.0 {
        2 => Outcome::Sent,
        5 => Outcome::Bounced,
        _ => Outcome::Deferred,
    };
    Verdict { outcome, status, text: text.into() }
}

/// What one recipient's step came to, as its delivery log line records it.
pub fn attempt(now: u64, recipient: Recipient, relay: Where, event: Event<'_>) -> Attempt {
    let Verdict { outcome, status, text } = judge(event);
    Attempt { time: now, outcome, recipient, status: Some(status), relay, text, protection: None }
}

/// The one place that says what an event means for a recipient.
pub fn judge(event: Event<'_>) -> Verdict {
    match event {
        Event::Reply(reply) => of_reply(reply),
        // A server that will not talk (a 554 greeting, a refused HELO) is another host's
        // chance, or a later run's: never a bounce (RFC 5321 §3.1).
        Event::Connect(ClientError::Smtp(SmtpError::Refused(reply))) => verdict(es(4, 4, 1), reply.summary()),
        Event::Connect(ClientError::Network { text, .. }) => verdict(es(4, 4, 1), text.clone()),
        Event::Connect(e) | Event::Transaction(e) => of_client_error(e),
        Event::Route(e, domain) => of_route(e, domain),
        Event::Relayhost(why) => verdict(es(4, 4, 3), why),
        // X.3.5: the system is not configured to deliver this; fixed, a retry sends it signed.
        Event::Signing(why) => verdict(es(4, 3, 5), why),
        Event::LiteralLoop(ip) => verdict(es(5, 4, 6), format!("mail for [{ip}] loops back to myself")),
        // X.7.5: the policy cannot be met now; it may be once the domain's servers are fixed.
        Event::TlsPolicy(why) => verdict(es(4, 7, 5), why),
        Event::Delivered(path) => verdict(es(2, 0, 0), format!("delivered to {path}")),
        Event::Maildir(MaildirError::Loop) => verdict(es(5, 4, 6), "mail forwarding loop"),
        // RFC 3463 §3.3: X.2.2 mailbox full; the rest is for the administrator to fix.
        Event::Maildir(MaildirError::Full(why)) => verdict(es(4, 2, 2), why.clone()),
        Event::Maildir(MaildirError::Unsafe(why) | MaildirError::Io(why)) => verdict(es(4, 3, 0), why.clone()),
        // X.3.0: a command alias that said no for good (a sysexits code that is not temporary).
        Event::Maildir(MaildirError::Refused(why)) => verdict(es(5, 3, 0), why.clone()),
        // X.2.1: the user cannot write its own mailbox; retries for days would not change it.
        Event::Maildir(MaildirError::Denied(why)) => verdict(es(5, 2, 1), format!("{why} (the user's own mailbox)")),
        Event::Alias(ExpandError::UnknownUser(who)) => verdict(es(5, 1, 1), format!("{who}: no such user here")),
        Event::Alias(ExpandError::Loop(who)) => verdict(es(5, 4, 6), format!("{who}: aliases loop")),
        // X.3.5: the system is not configured to deliver this; fixed, a retry delivers it.
        Event::Alias(ExpandError::Broken(who, why)) => verdict(es(4, 3, 5), format!("{who}: alias not usable: {why}")),
    }
}

/// RFC 3463 §2: the server's code when its class agrees, else the class alone.
fn of_reply(reply: &Reply) -> Verdict {
    let class = match reply.code() / 100 {
        2 | 3 => 2,
        4 => 4,
        _ => 5,
    };
    let status = reply.status().filter(|s| s.0 == class).unwrap_or(es(class, 0, 0));
    verdict(status, reply.summary())
}

fn of_client_error(e: &ClientError) -> Verdict {
    match e {
        // X.4.2: the connection broke. After the dot the server may have the message; the
        // text says so, and the retry may duplicate it (RFC 5321 §6.1 prefers that to a loss).
        ClientError::Network { text, after_data: true } => {
            verdict(es(4, 4, 2), format!("{text} after the message was sent"))
        }
        ClientError::Network { text, after_data: false } => verdict(es(4, 4, 2), text.clone()),
        ClientError::Tls(why) => verdict(es(4, 7, 5), why.clone()),
        ClientError::QueueRead(why) => verdict(es(4, 3, 0), format!("reading the queue file: {why}")),
        ClientError::Smtp(e) => of_smtp_error(e),
    }
}

fn of_smtp_error(e: &SmtpError) -> Verdict {
    match e {
        SmtpError::Refused(reply) => of_reply(reply),
        SmtpError::Protocol(why) => verdict(es(4, 5, 0), why.to_string()),
        SmtpError::Injected => verdict(es(4, 5, 0), "the server sent more after its STARTTLS reply"),
        SmtpError::Unexpected => verdict(es(4, 5, 0), "the server's replies did not follow the commands"),
        SmtpError::TlsRequired(Some(reply)) => verdict(es(4, 7, 5), format!("STARTTLS refused: {}", reply.summary())),
        SmtpError::TlsRequired(None) => verdict(es(4, 7, 5), "the server does not offer STARTTLS"),
        SmtpError::NoAuthMechanism => verdict(es(4, 7, 0), "the server offers no AUTH PLAIN or LOGIN"),
        SmtpError::TooBig { size, limit } => {
            verdict(es(5, 3, 4), format!("message size {size} exceeds the server's limit of {limit}"))
        }
        SmtpError::NeedsSmtputf8 => verdict(es(5, 6, 7), "the server does not offer SMTPUTF8"),
    }
}

fn of_route(e: &RouteError, domain: &str) -> Verdict {
    match e {
        RouteError::Temporary(why) => verdict(es(4, 4, 3), format!("DNS lookup for {domain} failed: {why}")),
        RouteError::NoPrimary(why) => verdict(es(4, 4, 4), format!("unable to find primary relay for {domain}: {why}")),
        RouteError::NoDomain => verdict(es(5, 1, 2), format!("Host or domain name not found: {domain} does not exist")),
        // RFC 7505 §4.3: the sender is told with 556 5.1.10.
        RouteError::NullMx => verdict(es(5, 1, 10), format!("556 5.1.10 Recipient address has null MX ({domain})")),
        RouteError::NoAddress => verdict(es(5, 4, 4), format!("no mail host for {domain} has an address")),
        RouteError::Loop => verdict(es(5, 4, 6), format!("mail for {domain} loops back to myself")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::{Parsed, ReplyError, parse_reply};

    fn reply(wire: &str) -> Reply {
        match parse_reply(wire.as_bytes()) {
            Parsed::Reply(r, _) => r,
            other => panic!("{other:?}"),
        }
    }

    fn summary(v: Verdict) -> String {
        let outcome = match v.outcome {
            Outcome::Sent => "sent",
            Outcome::Deferred => "deferred",
            Outcome::Bounced => "bounced",
            Outcome::Warned | Outcome::Reported | Outcome::Copying | Outcome::Requeued => "other",
        };
        format!("{outcome} {}", v.status)
    }

    #[test]
    fn replies_decide_by_class_with_an_agreeing_code() {
        for (wire, want) in [
            ("250 2.0.0 ok\r\n", "sent 2.0.0"),
            ("250 queued\r\n", "sent 2.0.0"),
            ("550 5.1.1 unknown\r\n", "bounced 5.1.1"),
            ("550 unknown\r\n", "bounced 5.0.0"),
            ("451 4.7.1 greylisted\r\n", "deferred 4.7.1"),
            ("452 5.2.2 says permanent, code says not\r\n", "deferred 4.0.0"),
            ("421 4.4.2 closing\r\n", "deferred 4.4.2"),
        ] {
            assert_eq!(summary(judge(Event::Reply(&reply(wire)))), want, "{wire}");
        }
        assert_eq!(judge(Event::Reply(&reply("550 5.1.1 no bob\r\n"))).text, "550 5.1.1 no bob");
    }

    #[test]
    fn every_error_has_its_outcome() {
        let refused = ClientError::Smtp(SmtpError::Refused(reply("554 5.7.1 go away\r\n")));
        let broken = ClientError::Network { text: "reset".into(), after_data: false };
        let after = ClientError::Network { text: "timed out".into(), after_data: true };
        let route = |e: RouteError| summary(judge(Event::Route(&e, "b.test")));
        let smtp = |e: SmtpError| summary(judge(Event::Transaction(&ClientError::Smtp(e))));
        let table = [
            (summary(judge(Event::Connect(&refused))), "deferred 4.4.1"),
            (summary(judge(Event::Connect(&broken))), "deferred 4.4.1"),
            (summary(judge(Event::Transaction(&refused))), "bounced 5.7.1"),
            (summary(judge(Event::Transaction(&broken))), "deferred 4.4.2"),
            (summary(judge(Event::Transaction(&after))), "deferred 4.4.2"),
            (summary(judge(Event::Transaction(&ClientError::Tls("bad".into())))), "deferred 4.7.5"),
            (summary(judge(Event::Transaction(&ClientError::QueueRead("EIO".into())))), "deferred 4.3.0"),
            (smtp(SmtpError::Protocol(ReplyError::LineTooLong)), "deferred 4.5.0"),
            (smtp(SmtpError::Injected), "deferred 4.5.0"),
            (smtp(SmtpError::Unexpected), "deferred 4.5.0"),
            (smtp(SmtpError::TlsRequired(None)), "deferred 4.7.5"),
            (smtp(SmtpError::NoAuthMechanism), "deferred 4.7.0"),
            (smtp(SmtpError::TooBig { size: 2, limit: 1 }), "bounced 5.3.4"),
            (smtp(SmtpError::NeedsSmtputf8), "bounced 5.6.7"),
            (route(RouteError::Temporary("SERVFAIL".into())), "deferred 4.4.3"),
            (route(RouteError::NoPrimary("x".into())), "deferred 4.4.4"),
            (route(RouteError::NoDomain), "bounced 5.1.2"),
            (route(RouteError::NullMx), "bounced 5.1.10"),
            (route(RouteError::NoAddress), "bounced 5.4.4"),
            (route(RouteError::Loop), "bounced 5.4.6"),
            (summary(judge(Event::Relayhost("no relayhost configured"))), "deferred 4.4.3"),
            (summary(judge(Event::LiteralLoop("127.0.0.1".parse().unwrap()))), "bounced 5.4.6"),
            (summary(judge(Event::Delivered("/m/new/1"))), "sent 2.0.0"),
            (summary(judge(Event::Maildir(&MaildirError::Loop))), "bounced 5.4.6"),
            (summary(judge(Event::Maildir(&MaildirError::Full("quota".into())))), "deferred 4.2.2"),
            (summary(judge(Event::Maildir(&MaildirError::Unsafe("symlink".into())))), "deferred 4.3.0"),
            (summary(judge(Event::Maildir(&MaildirError::Io("EIO".into())))), "deferred 4.3.0"),
            (summary(judge(Event::Maildir(&MaildirError::Refused("exit 1".into())))), "bounced 5.3.0"),
            (summary(judge(Event::Alias(&ExpandError::UnknownUser("bob".into())))), "bounced 5.1.1"),
            (summary(judge(Event::Alias(&ExpandError::Loop("a".into())))), "bounced 5.4.6"),
            (summary(judge(Event::Alias(&ExpandError::Broken("a".into(), "why".into())))), "deferred 4.3.5"),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
        let text = judge(Event::Transaction(&after)).text;
        assert!(text.ends_with("after the message was sent"), "{text}");
        assert!(judge(Event::Transaction(&ClientError::QueueRead("EIO".into()))).text.contains("queue file"));
    }
}
