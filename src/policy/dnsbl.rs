//! DNS block and allow lists (RFC 5782): the name to ask for a client in a list's zone, what
//! the answers mean, and the weighted score of all the lists, as Postfix's postscreen adds
//! them up; `ask` puts the questions, all lists at once.

use std::net::IpAddr;
use std::time::Instant;

use crate::dns::Resolve;
use crate::smtp::reply::{EnhancedStatus, Reply};

/// One list: its zone and its weight (negative for an allow list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub zone: String,
    pub weight: i32,
}

/// `zen.spamhaus.org*2, bl.spamcop.net, list.dnswl.org*-5`: zones, each with an optional
/// weight (1 when none is given).
pub fn parse_lists(text: &str) -> Result<Vec<List>, String> {
    let mut lists = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (zone, weight) = match item.split_once('*') {
            Some((zone, weight)) => {
                let weight: i32 = weight.trim().parse().map_err(|_| format!("`{item}`: the weight is not a number"))?;
                if weight == 0 || weight.abs() > 100 {
                    return Err(format!("`{item}`: a weight is between -100 and 100, and not 0"));
                }
                (zone.trim(), weight)
            }
            None => (item, 1),
        };
        let zone = crate::smtp::address::Domain::parse(zone)
            .map_err(|_| format!("`{zone}` is not a domain name"))?
            .to_string()
            .to_ascii_lowercase();
        lists.push(List { zone, weight });
    }
    Ok(lists)
}

/// RFC 5782 §2.1 and §2.4: the name asked for `ip` in `zone`: an IPv4 address's octets in
/// reverse order, an IPv6 address's nibbles in reverse order.
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name += &format!("{:x}.{:x}.", byte & 0xf, byte >> 4);
            }
            name + zone
        }
    }
}

/// What one list said of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    /// Listed (RFC 5782 §2.3: an A record in 127.0.0.0/8).
    Listed,
    /// Not listed (no such name, no record), or the list could not be asked in time.
    NotListed,
    /// An answer in 127.255.255.0/24: not a listing but the list's error code (Spamhaus
    /// answers so when asked through a public resolver, or over its free use).
    ErrorCode(IpAddr),
}

/// The A records a list gave for the client.
pub fn said(answers: &[IpAddr]) -> Said {
    let mut listed = false;
    for a in answers {
        if let IpAddr::V4(v4) = a {
            let o = v4.octets();
            if o[0] == 127 && o[1] == 255 && o[2] == 255 {
                return Said::ErrorCode(*a);
            }
            listed |= o[0] == 127;
        }
    }
    if listed { Said::Listed } else { Said::NotListed }
}

/// The lists' verdict on a client: its score (the weights of the lists that list it), and the
/// block lists that do, for the reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Score {
    pub score: i32,
    pub blocked_by: Vec<String>,
}

impl Score {
    /// What each RCPT of a client scored so gets: refused, naming the block lists, once the
    /// score reaches `threshold`.
    pub fn refusal(&self, ip: IpAddr, threshold: i32) -> Option<Reply> {
        (self.score >= threshold).then(|| {
            let text = format!("Service unavailable; client [{ip}] blocked using {}", self.blocked_by.join(", "));
            Reply::new(554, EnhancedStatus::new(5, 7, 1), text)
        })
    }
}

pub fn score(lists: &[List], said: &[Said]) -> Score {
    let mut out = Score::default();
    for (list, said) in lists.iter().zip(said) {
        if *said == Said::Listed {
            out.score += list.weight;
            if list.weight > 0 {
                out.blocked_by.push(list.zone.clone());
            }
        }
    }
    out
}

/// Asks every list about `ip` at once, one thread each with a resolver of its own from
/// `resolver`, all within `until`; a list that fails or does not answer in time lists nothing.
pub fn ask<'r>(
    lists: &[List],
    ip: IpAddr,
    resolver: &(dyn Fn() -> Box<dyn Resolve + 'r> + Sync),
    until: Instant,
) -> Vec<Said> {
    std::thread::scope(|scope| {
        let asking: Vec<_> = lists
            .iter()
            .map(|list| {
                let name = query_name(ip, &list.zone);
                scope.spawn(move || match resolver().ips(&name, false, until) {
                    Ok(answers) => said(&answers),
                    Err(_) => Said::NotListed,
                })
            })
            .collect();
        asking.into_iter().map(|h| h.join().unwrap_or(Said::NotListed)).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_with_their_weights() {
        let lists = parse_lists("zen.spamhaus.org*2, bl.spamcop.net, list.dnswl.org*-5").unwrap();
        let got: Vec<(&str, i32)> = lists.iter().map(|l| (l.zone.as_str(), l.weight)).collect();
        assert_eq!(got, [("zen.spamhaus.org", 2), ("bl.spamcop.net", 1), ("list.dnswl.org", -5)]);
        assert_eq!(parse_lists("").unwrap(), []);
        for bad in ["zen*x", "zen.example*0", "not a zone", "a.example*1000"] {
            assert!(parse_lists(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_as_rfc_5782_writes_them() {
        // RFC 5782 §2.1 and §2.4's own examples.
        assert_eq!(query_name("192.168.2.1".parse().unwrap(), "dnsbl.example.net"), "1.2.168.192.dnsbl.example.net");
        assert_eq!(
            query_name("2001:db8:1:2:3:4:567:89ab".parse().unwrap(), "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
        assert_eq!(query_name("::ffff:192.0.2.9".parse().unwrap(), "l.test"), "9.2.0.192.l.test");
    }

    #[test]
    fn answers_listings_error_codes_and_the_score() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(said(&[ip("127.0.0.2")]), Said::Listed);
        assert_eq!(said(&[ip("127.0.0.4"), ip("127.0.0.10")]), Said::Listed);
        assert_eq!(said(&[ip("127.255.255.254")]), Said::ErrorCode(ip("127.255.255.254")));
        assert_eq!(said(&[ip("192.0.2.1")]), Said::NotListed);
        assert_eq!(said(&[]), Said::NotListed);
        let lists = parse_lists("a.test*2, b.test, allow.test*-5").unwrap();
        let s = score(&lists, &[Said::Listed, Said::Listed, Said::NotListed]);
        assert_eq!(s, Score { score: 3, blocked_by: vec!["a.test".into(), "b.test".into()] });
        assert_eq!(score(&lists, &[Said::Listed, Said::NotListed, Said::Listed]).score, -3);
        assert_eq!(score(&lists, &[Said::ErrorCode(ip("127.255.255.254")), Said::NotListed, Said::NotListed]).score, 0);
    }
}
