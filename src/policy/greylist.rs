//! Greylisting, as postgrey and Postfix users know it: the first attempt of a (client network,
//! sender, recipient) triple is deferred; a retry after the delay and within a day passes, and
//! the triple is then let through for 35 days from its last pass. A client that queues its
//! mail retries; most spam bots do not.
//!
//! Pure: the caller gives the time and keeps the state in a file as the lines `line` writes
//! (one event each, appended) and `load` reads, e.g.
//!
//! ```text
//! 1796490000 first 192.0.2.0/24 <bob@remote.test> <alice@example.test>
//! 1796490400 pass 192.0.2.0/24 <bob@remote.test> <alice@example.test>
//! ```

use std::collections::HashMap;
use std::net::IpAddr;

use crate::spool::envelope::{escape, unescape};

/// A retry is let through within a day of the first attempt.
pub const RETRY_WINDOW: u64 = 86_400;
/// A triple that passed is remembered this long after its last pass.
pub const REMEMBERED: u64 = 35 * 86_400;
/// Triples kept at most; past it the oldest go.
pub const MAX_TRIPLES: usize = 100_000;

/// The client's network (an IPv4 /24, an IPv6 /64: a sender's pool of outgoing servers
/// retries from a neighbour), the sender and the recipient, as their paths are written.
pub fn triple(client: IpAddr, sender: &str, rcpt: &str) -> String {
    let net = match client.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    };
    format!("{net} {} {}", escape(&sender.to_ascii_lowercase()), escape(&rcpt.to_ascii_lowercase()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    first: u64,
    /// The last pass, if it ever passed.
    passed: Option<u64>,
}

/// What to do with an attempt, and the event to record (none when nothing changed that
/// must survive a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub pass: bool,
    pub record: Option<String>,
}

#[derive(Debug, Default)]
pub struct Greylist {
    seen: HashMap<String, Seen>,
}

impl Greylist {
    /// Reads the recorded events in order; a line that does not parse (torn by a crash) is
    /// skipped. Returns the state and how many lines were read.
    pub fn load(text: &str) -> (Greylist, usize) {
        let mut list = Greylist::default();
        let mut lines = 0;
        for line in text.lines() {
            lines += 1;
            let mut words = line.splitn(3, ' ');
            let (Some(time), Some(kind), Some(key)) = (words.next(), words.next(), words.next()) else { continue };
            let Ok(time) = time.parse::<u64>() else { continue };
            // As `triple` writes it: three words of printable ASCII (paths escaped), no more.
            let printable = key.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if !printable || key.split(' ').count() != 3 || key.split(' ').skip(1).any(|w| unescape(w).is_none()) {
                continue;
            }
            match kind {
                "first" => {
                    list.seen.insert(key.to_string(), Seen { first: time, passed: None });
                }
                "pass" => {
                    let entry = list.seen.entry(key.to_string()).or_insert(Seen { first: time, passed: None });
                    entry.passed = Some(time);
                }
                _ => {}
            }
        }
        (list, lines)
    }

    /// An attempt of `key` (from `triple`) at `now`, with `delay` the time a retry must wait.
    pub fn attempt(&mut self, key: &str, now: u64, delay: u64) -> Decision {
        let record = |kind: &str| Some(format!("{now} {kind} {key}\n"));
        match self.seen.get(key).copied() {
            // Passed before, and not forgotten: through; the pass is recorded at most daily.
            Some(Seen { first, passed: Some(last) }) if now.saturating_sub(last) <= REMEMBERED => {
                let stale = now.saturating_sub(last) >= RETRY_WINDOW;
                if stale {
                    self.seen.insert(key.to_string(), Seen { first, passed: Some(now) });
                }
                Decision { pass: true, record: if stale { record("pass") } else { None } }
            }
            // A retry after the delay, within the window: through, and remembered.
            Some(Seen { first, passed: None })
                if now.saturating_sub(first) >= delay && now.saturating_sub(first) <= RETRY_WINDOW =>
            {
                self.seen.insert(key.to_string(), Seen { first, passed: Some(now) });
                Decision { pass: true, record: record("pass") }
            }
            // Too soon: deferred again, the first attempt unchanged.
            Some(Seen { first, passed: None }) if now >= first && now - first < delay => {
                Decision { pass: false, record: None }
            }
            // New, or forgotten, or its first attempt too long ago: a first attempt.
            _ => {
                self.make_room(now);
                self.seen.insert(key.to_string(), Seen { first: now, passed: None });
                Decision { pass: false, record: record("first") }
            }
        }
    }

    /// What is still worth keeping, as lines: the file's content when it is rewritten short.
    pub fn snapshot(&self, now: u64) -> String {
        let mut out = String::new();
        let mut keys: Vec<&String> = self.seen.keys().collect();
        keys.sort();
        for key in keys {
            let seen = self.seen[key];
            if expired(seen, now) {
                continue;
            }
            out += &format!("{} first {key}\n", seen.first);
            if let Some(passed) = seen.passed {
                out += &format!("{passed} pass {key}\n");
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Keeps the table within `MAX_TRIPLES`: what expired goes, then the oldest.
    fn make_room(&mut self, now: u64) {
        if self.seen.len() < MAX_TRIPLES {
            return;
        }
        self.seen.retain(|_, seen| !expired(*seen, now));
        while self.seen.len() >= MAX_TRIPLES {
            let oldest = self.seen.iter().min_by_key(|(_, s)| s.passed.unwrap_or(s.first)).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    self.seen.remove(&k);
                }
                None => break,
            }
        }
    }
}

fn expired(seen: Seen, now: u64) -> bool {
    match seen.passed {
        Some(last) => now.saturating_sub(last) > REMEMBERED,
        None => now.saturating_sub(seen.first) > RETRY_WINDOW,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: u64 = 300;

    #[test]
    fn triples_name_the_network_sender_and_recipient() {
        assert_eq!(
            triple("192.0.2.77".parse().unwrap(), "<Bob@Remote.test>", "<alice@example.test>"),
            "192.0.2.0/24 <bob@remote.test> <alice@example.test>"
        );
        assert_eq!(triple("2001:db8:1:2:3::9".parse().unwrap(), "<>", "<a@b>"), "2001:db8:1:2::/64 <> <a@b>");
        assert_eq!(triple("::ffff:192.0.2.1".parse().unwrap(), "<>", "<a@b>"), "192.0.2.0/24 <> <a@b>");
        // A path with a space in a quoted local part stays one word.
        assert_eq!(triple("192.0.2.1".parse().unwrap(), "<\"a b\"@c>", "<d@e>").split(' ').count(), 3);
    }

    #[test]
    fn first_deferred_retry_after_the_delay_passes_and_is_remembered() {
        let mut g = Greylist::default();
        let k = "192.0.2.0/24 <b@r.test> <a@e.test>";
        let t = 1_796_490_000;
        let first = g.attempt(k, t, DELAY);
        assert_eq!(first, Decision { pass: false, record: Some(format!("{t} first {k}\n")) });
        assert_eq!(g.attempt(k, t + 60, DELAY), Decision { pass: false, record: None });
        let retry = g.attempt(k, t + DELAY, DELAY);
        assert!(retry.pass && retry.record == Some(format!("{} pass {k}\n", t + DELAY)));
        // Remembered: through, and the pass recorded again only once a day.
        assert_eq!(g.attempt(k, t + DELAY + 10, DELAY), Decision { pass: true, record: None });
        assert!(g.attempt(k, t + DELAY + RETRY_WINDOW, DELAY).record.is_some());
        // Forgotten after 35 days without a pass: a first attempt again.
        assert!(!g.attempt(k, t + DELAY + RETRY_WINDOW + REMEMBERED + 1, DELAY).pass);
        // A retry more than a day after the first attempt starts again.
        let k2 = "192.0.2.0/24 <c@r.test> <a@e.test>";
        g.attempt(k2, t, DELAY);
        let late = g.attempt(k2, t + RETRY_WINDOW + 1, DELAY);
        assert!(!late.pass && late.record.is_some_and(|r| r.contains(" first ")));
    }

    #[test]
    fn the_recorded_lines_bring_it_back_and_torn_ones_are_skipped() {
        let mut g = Greylist::default();
        let (k1, k2) = ("192.0.2.0/24 <b@r.test> <a@e.test>", "198.51.100.0/24 <> <a@e.test>");
        let t = 1_796_490_000;
        let mut file = String::new();
        for (k, at) in [(k1, t), (k1, t + DELAY), (k2, t + 1)] {
            file += &g.attempt(k, at, DELAY).record.unwrap_or_default();
        }
        // Keys that `triple` never writes (a control character, a stray CR) are skipped.
        file += "1796490400 first 10.0.0.0/24 <x@r.test> <a@e.test>\r\r\n";
        file += "1796490400 first 10.0.0.0/24 <x\u{1}@r.test> <a@e.test>\n";
        file += "1796490500 pass 10.0.0.0/24 <x@"; // torn by a crash
        let (mut back, lines) = Greylist::load(&file);
        assert_eq!((lines, back.len()), (6, 2));
        assert!(back.attempt(k1, t + DELAY + 1, DELAY).pass);
        assert!(!back.attempt(k2, t + 2, DELAY).pass);
        assert!(back.attempt(k2, t + 1 + DELAY, DELAY).pass);
        // A snapshot is the same state in fewer lines; what expired is left out.
        let (again, _) = Greylist::load(&back.snapshot(t + DELAY + 2));
        assert_eq!(again.len(), 2);
        assert!(Greylist::load(&back.snapshot(t + 40 * 86_400)).0.is_empty());
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut g = Greylist::default();
        for i in 0..(MAX_TRIPLES + 5) {
            g.attempt(&format!("10.0.0.0/24 <{i}@r.test> <a@e.test>"), 1_000 + i as u64, DELAY);
        }
        assert!(g.len() <= MAX_TRIPLES);
    }
}
