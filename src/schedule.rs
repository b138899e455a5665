//! When to try each recipient again: a pure function of arrival time, the delivery log and now.
//!
//! Back-off per recipient doubles from `min_backoff` to `max_backoff` after each deferral
//! (RFC 5321 §4.5.4.1: retries spaced out, the give-up time configurable, at least 4-5 days).

use std::time::Duration;

use crate::spool::log::{Attempt, Outcome, Recipient};

/// The retry settings from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub max_queue_lifetime: Duration,
    /// Zero turns delay warnings off.
    pub delay_warning_time: Duration,
}

impl RetryPolicy {
    /// The configuration's retry keys.
    pub fn of(config: &crate::config::Config) -> RetryPolicy {
        RetryPolicy {
            min_backoff: config.min_backoff,
            max_backoff: config.max_backoff,
            max_queue_lifetime: config.max_queue_lifetime,
            delay_warning_time: config.delay_warning_time,
        }
    }
}

/// What one delivery run should do with one message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Recipients to try now.
    pub due: Vec<Recipient>,
    /// Recipients deferred past the queue lifetime: bounce them, with their last attempt.
    pub expired: Vec<Attempt>,
    /// When the earliest recipient still waiting becomes due (seconds since 1970).
    pub next_attempt: Option<u64>,
    /// A delay warning is due: the warning time has passed, a recipient was deferred, and no
    /// warning went yet. The runner sends it if recipients are still deferred after this run.
    pub warn: bool,
    /// Bounced recipients whose report is not queued yet (no `reported` line after them):
    /// a run that cannot queue it leaves the message, and a later run builds it again.
    pub owed_report: Vec<Attempt>,
    /// Every recipient has a final outcome and no report is owed: the message can go.
    pub finished: bool,
}

/// Seconds to wait after the `deferrals`-th deferral (1-based).
pub fn backoff(policy: &RetryPolicy, deferrals: u32) -> u64 {
    let min = policy.min_backoff.as_secs().max(1);
    let doubled = min.saturating_mul(1u64 << deferrals.saturating_sub(1).min(40));
    doubled.min(policy.max_backoff.as_secs().max(min))
}

/// The plan for a message that arrived at `arrived` with these final recipients.
///
/// A `requeued` line restarts the message's clock: the deferrals and the delay warning
/// before the last one no longer count, and the lifetime and the warning time run from it
/// (`postern-queue requeue`). What was sent, bounced or reported before it still stands.
pub fn plan(policy: &RetryPolicy, arrived: u64, recipients: &[Recipient], log: &[Attempt], now: u64) -> Plan {
    let mut plan = Plan::default();
    let whole = log;
    let (arrived, log) = match log.iter().rposition(|a| a.outcome == Outcome::Requeued) {
        Some(at) => (arrived.max(log[at].time), &log[at + 1..]),
        None => (arrived, log),
    };
    let mut waiting = false;
    let expired_at = arrived.saturating_add(policy.max_queue_lifetime.as_secs());
    for rcpt in recipients {
        if whole.iter().any(|a| a.recipient == *rcpt && a.outcome.is_final()) {
            continue;
        }
        let mine: Vec<&Attempt> = log.iter().filter(|a| a.recipient == *rcpt).collect();
        let deferrals: Vec<&&Attempt> = mine.iter().filter(|a| a.outcome == Outcome::Deferred).collect();
        let Some(last) = deferrals.iter().max_by_key(|a| a.time) else {
            plan.due.push(rcpt.clone());
            continue;
        };
        if now >= expired_at {
            plan.expired.push((**last).clone());
            continue;
        }
        let count = u32::try_from(deferrals.len()).unwrap_or(u32::MAX);
        let due_at = last.time.saturating_add(backoff(policy, count));
        if now >= due_at {
            plan.due.push(rcpt.clone());
        } else {
            waiting = true;
            plan.next_attempt = Some(plan.next_attempt.map_or(due_at, |t| t.min(due_at)));
        }
    }
    let reported_to = whole.iter().rposition(|a| a.outcome == Outcome::Reported).map_or(0, |i| i + 1);
    plan.owed_report = whole.iter().skip(reported_to).filter(|a| a.outcome == Outcome::Bounced).cloned().collect();
    let warned = log.iter().any(|a| a.outcome == Outcome::Warned);
    let deferred_any = log.iter().any(|a| a.outcome == Outcome::Deferred);
    let warn_at = arrived.saturating_add(policy.delay_warning_time.as_secs());
    plan.finished = plan.due.is_empty() && plan.expired.is_empty() && !waiting && plan.owed_report.is_empty();
    plan.warn = !policy.delay_warning_time.is_zero() && !warned && deferred_any && !plan.finished && now >= warn_at;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60;
    const HOUR: u64 = 3600;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            min_backoff: Duration::from_secs(5 * MIN),
            max_backoff: Duration::from_secs(HOUR),
            max_queue_lifetime: Duration::from_secs(5 * 24 * HOUR),
            delay_warning_time: Duration::from_secs(4 * HOUR),
        }
    }

    fn deferred(rcpt: &str, time: u64) -> Attempt {
        Attempt {
            time,
            outcome: Outcome::Deferred,
            recipient: key(rcpt),
            status: Some(crate::smtp::reply::EnhancedStatus(4, 4, 1)),
            relay: crate::spool::log::Where::Nowhere,
            text: "refused".into(),
            protection: None,
        }
    }

    fn key(text: &str) -> Recipient {
        match text {
            "-" | "" => Recipient::Message,
            t => Recipient::Address(t.trim_start_matches('<').trim_end_matches('>').into()),
        }
    }

    fn rcpts(list: &[&str]) -> Vec<Recipient> {
        list.iter().map(|s| key(s)).collect()
    }

    #[test]
    fn new_recipients_are_due_at_once() {
        let p = plan(&policy(), 1000, &rcpts(&["<a@x>", "<b@y>"]), &[], 1000);
        assert_eq!(p.due, rcpts(&["<a@x>", "<b@y>"]));
        assert!(!p.finished && !p.warn);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let secs: Vec<u64> = (1..=6).map(|n| backoff(&policy(), n)).collect();
        assert_eq!(secs, [300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(backoff(&policy(), u32::MAX), 3600);
    }

    #[test]
    fn a_deferred_recipient_waits_for_its_backoff() {
        let log = [deferred("<a@x>", 1000)];
        let early = plan(&policy(), 1000, &rcpts(&["<a@x>"]), &log, 1000 + 4 * MIN);
        assert_eq!((early.due.len(), early.next_attempt, early.finished), (0, Some(1300), false));
        let later = plan(&policy(), 1000, &rcpts(&["<a@x>"]), &log, 1300);
        assert_eq!(later.due, rcpts(&["<a@x>"]));
    }

    #[test]
    fn final_outcomes_finish_the_message() {
        let mut sent = deferred("<a@x>", 2000);
        sent.outcome = Outcome::Sent;
        let mut bounced = deferred("<b@y>", 2000);
        bounced.outcome = Outcome::Bounced;
        let log = [deferred("<a@x>", 1000), sent, bounced];
        let p = plan(&policy(), 1000, &rcpts(&["<a@x>", "<b@y>"]), &log, 5000);
        assert!(!p.finished && p.due.is_empty(), "the report for <b@y> is not queued yet");
        assert_eq!(p.owed_report, vec![log[2].clone()]);
        let mut reported = log.to_vec();
        reported.push(Attempt { outcome: Outcome::Reported, ..deferred("-", 2001) });
        let p = plan(&policy(), 1000, &rcpts(&["<a@x>", "<b@y>"]), &reported, 5000);
        assert!(p.finished && p.owed_report.is_empty());
    }

    #[test]
    fn a_report_line_covers_only_the_bounces_before_it() {
        let bounced = |rcpt: &str, time| Attempt { outcome: Outcome::Bounced, ..deferred(rcpt, time) };
        let reported = Attempt { outcome: Outcome::Reported, ..deferred("-", 2000) };
        let log = [bounced("<a@x>", 1000), reported, bounced("<b@y>", 3000)];
        let p = plan(&policy(), 1000, &rcpts(&["<a@x>", "<b@y>"]), &log, 5000);
        assert_eq!(p.owed_report, vec![log[2].clone()]);
        assert!(!p.finished);
    }

    #[test]
    fn past_the_lifetime_deferred_recipients_expire() {
        let arrived = 1000;
        let log = [deferred("<a@x>", arrived + 5 * 24 * HOUR - 10)];
        let p = plan(&policy(), arrived, &rcpts(&["<a@x>", "<new@y>"]), &log, arrived + 5 * 24 * HOUR);
        assert_eq!(p.expired, log.to_vec());
        assert_eq!(p.due, rcpts(&["<new@y>"]), "a recipient never tried is still tried once");
    }

    #[test]
    fn a_requeue_makes_deferred_recipients_due_and_restarts_the_clock() {
        let arrived = 1000;
        let requeued = |time| Attempt { outcome: Outcome::Requeued, ..deferred("-", time) };
        let sent = Attempt { outcome: Outcome::Sent, ..deferred("<b@y>", arrived + 10) };
        let warned = Attempt { outcome: Outcome::Warned, ..deferred("-", arrived + 4 * HOUR) };
        let old = arrived + 5 * 24 * HOUR - 60;
        let mut log = vec![deferred("<a@x>", arrived), sent, deferred("<a@x>", old), warned];
        let rcpts = rcpts(&["<a@x>", "<b@y>"]);
        // Without the requeue: waiting for its second back-off.
        assert_eq!(plan(&policy(), arrived, &rcpts, &log, old + 10).next_attempt, Some(old + 10 * MIN));
        log.push(requeued(old + 10));
        let p = plan(&policy(), arrived, &rcpts, &log, old + 10);
        assert_eq!(p.due, rcpts[..1].to_vec(), "due at once; the one sent is still done");
        // Deferred again: the back-off starts over, and the message does not expire when the
        // five days since its arrival are up, but five days after the requeue.
        log.push(deferred("<a@x>", old + 20));
        let p = plan(&policy(), arrived, &rcpts, &log, old + 100);
        assert_eq!((p.next_attempt, p.expired.len(), p.warn), (Some(old + 20 + 5 * MIN), 0, false));
        let p = plan(&policy(), arrived, &rcpts, &log, old + 10 + 4 * HOUR);
        assert!(p.warn, "a warning again, four hours after the requeue");
        let p = plan(&policy(), arrived, &rcpts, &log, old + 10 + 5 * 24 * HOUR);
        assert_eq!(p.expired.len(), 1);
    }

    #[test]
    fn one_delay_warning_after_the_warning_time() {
        let log = vec![deferred("<a@x>", 1000 + 3 * HOUR)];
        let before = plan(&policy(), 1000, &rcpts(&["<a@x>"]), &log, 1000 + 3 * HOUR + 10);
        assert!(!before.warn);
        let after = plan(&policy(), 1000, &rcpts(&["<a@x>"]), &log, 1000 + 4 * HOUR);
        assert!(after.warn);
        let mut warned = log.clone();
        warned.push(Attempt { outcome: Outcome::Warned, ..deferred("-", 1000 + 4 * HOUR) });
        assert!(!plan(&policy(), 1000, &rcpts(&["<a@x>"]), &warned, 1000 + 4 * HOUR + 1).warn);
        let off = RetryPolicy { delay_warning_time: Duration::ZERO, ..policy() };
        assert!(!plan(&off, 1000, &rcpts(&["<a@x>"]), &log, 1000 + 4 * HOUR).warn);
    }
}
