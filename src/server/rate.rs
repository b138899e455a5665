//! Events per client address per minute (connections, messages), as Postfix's anvil counts
//! them: a fixed window per address, started by its first event, in a table of bounded size.
//! Pure: the caller gives the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window the limits are per.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses counted at once at most: past it, windows that are over go, and if none is,
/// the table starts again (a flood of addresses must not grow it without end).
const ADDRESSES: usize = 65_536;

#[derive(Default)]
pub struct Rates(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl Rates {
    /// Counts one event from `ip` at `now`; returns how many it has had in its window, this one
    /// included.
    pub fn hit(&self, ip: IpAddr, now: Instant) -> u32 {
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= ADDRESSES && !table.contains_key(&ip) {
            table.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if table.len() >= ADDRESSES {
                table.clear();
            }
        }
        let entry = table.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_counted_per_address_per_window() {
        let rates = Rates::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let t = Instant::now();
        assert_eq!((rates.hit(a, t), rates.hit(a, t + Duration::from_secs(30)), rates.hit(b, t)), (1, 2, 1));
        assert_eq!(rates.hit(a, t + Duration::from_secs(59)), 3);
        // The window is over: counting starts again.
        assert_eq!(rates.hit(a, t + Duration::from_secs(60)), 1);
    }

    #[test]
    fn the_table_stays_bounded() {
        let rates = Rates::default();
        let t = Instant::now();
        let address = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..ADDRESSES as u32 {
            rates.hit(address(i), t);
        }
        assert_eq!(rates.len(), ADDRESSES);
        // Windows that are over make room first.
        rates.hit("192.0.2.9".parse().unwrap(), t + WINDOW);
        assert_eq!(rates.len(), 1);
        // A flood of new addresses within one window never grows it past the bound.
        for i in 0..(2 * ADDRESSES as u32) {
            rates.hit(address(i), t + WINDOW);
            assert!(rates.len() <= ADDRESSES);
        }
    }
}
