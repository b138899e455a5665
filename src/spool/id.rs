//! Queue IDs: unique across threads, processes and restarts, sortable by arrival, safe as file names.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// 13 hex digits of microseconds since 1970, 6 of process ID, 4 of a per-process
/// counter: time alone repeats across threads, time and pid across fast restarts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(String);

const LEN: usize = 23;

impl QueueId {
    /// A new ID for a message arriving now.
    pub fn generate() -> QueueId {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed) & 0xffff;
        let pid = std::process::id() & 0xff_ffff;
        QueueId(format!("{:013X}{pid:06X}{seq:04X}", micros & 0xf_ffff_ffff_ffff))
    }

    /// Accepts only what `generate` makes, so a name from a directory listing
    /// can never hold a path separator or a dot.
    pub fn parse(text: &str) -> Option<QueueId> {
        let ok = text.len() == LEN && text.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        ok.then(|| QueueId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Arrival time in seconds since 1970, read back from the ID.
    pub fn arrival_secs(&self) -> u64 {
        u64::from_str_radix(&self.0[..13], 16).map_or(0, |micros| micros / 1_000_000)
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_across_threads() {
        let handles: Vec<_> =
            (0..8).map(|_| std::thread::spawn(|| (0..1000).map(|_| QueueId::generate()).collect::<Vec<_>>())).collect();
        let all: HashSet<QueueId> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert_eq!(all.len(), 8000);
    }

    #[test]
    fn ids_sort_by_arrival_and_parse_back() {
        let a = QueueId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = QueueId::generate();
        assert!(a < b);
        assert_eq!(QueueId::parse(a.as_str()), Some(a.clone()));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(now - a.arrival_secs() < 5);
    }

    #[test]
    fn only_generated_names_parse() {
        for bad in
            ["", "../etc/passwd", "18B3F2A1C4D5E0001A3F00", "18B3F2A1C4D5E0001A3F0001", "18b3f2a1c4d5e0001a3f000"]
        {
            assert_eq!(QueueId::parse(bad), None, "{bad}");
        }
    }
}
