//! The `Received:` trace header (RFC 5321 §4.4) and RFC 5322 dates, as pure functions.

use std::net::IpAddr;

use crate::smtp::address::Host;

/// What the trace header records about one message.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub client: Option<IpAddr>,
    /// The client's forward-confirmed name, when it has one.
    pub client_name: Option<&'a str>,
    /// The client's address is left out on purpose: no `(unknown ...)` comment at all.
    pub hidden: bool,
    pub hostname: &'a str,
    /// RFC 3848: SMTP, ESMTP, ESMTPS, LOCAL.
    pub protocol: &'a str,
    /// Under TLS: the version and cipher, as `TLSv1.3 with cipher TLS_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
    pub id: &'a str,
    /// Named only when there is exactly one (§7.2: lists of recipients are private).
    pub single_recipient: Option<String>,
    pub time: u64,
}

/// The header, folded over lines, ending in CRLF.
pub fn received(t: &Trace<'_>) -> String {
    let peer = match t.client {
        // An address literal as §4.1.3 writes it: `[192.0.2.1]`, `[IPv6:2001:db8::1]`.
        Some(ip) => format!("{} {}", t.client_name.unwrap_or("unknown"), Host::Literal(ip.to_canonical())),
        None => "unknown".to_string(),
    };
    let mut h = match t.hidden {
        true => format!("Received: from {}", t.helo),
        false => format!("Received: from {} ({peer})", t.helo),
    };
    if let Some(tls) = &t.tls {
        h += &format!("\r\n\t(using {tls})"); // §4.4: a comment in the from clause
    }
    h += &format!("\r\n\tby {} (postern) with {} id {}", t.hostname, t.protocol, t.id);
    if let Some(rcpt) = &t.single_recipient {
        h += &format!("\r\n\tfor {rcpt}");
    }
    h += &format!(";\r\n\t{}\r\n", rfc5322_date(t.time));
    h
}

/// The trace field of a local submission (RFC 5321 §4.4: no `from` clause without a peer):
/// `Received: by HOST (postern, from userid UID) id ID; DATE`.
pub fn received_local(hostname: &str, uid: u32, id: &str, time: u64) -> String {
    format!("Received: by {hostname} (postern, from userid {uid})\r\n\tid {id};\r\n\t{}\r\n", rfc5322_date(time))
}

/// `Mon, 23 Nov 2026 10:12:00 +0000` (RFC 5322 §3.3), in UTC.
pub fn rfc5322_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = secs / 86400;
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86400;
    let weekday = DAYS[(days % 7) as usize];
    let month = MONTHS[(m - 1) as usize];
    format!("{weekday}, {d} {month} {y} {:02}:{:02}:{:02} +0000", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2026-12-03 09:43:11` (UTC), for listings.
pub fn iso_time(secs: u64) -> String {
    let (y, m, d) = civil_from_days(secs / 86400);
    let rem = secs % 86400;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `Thu Dec  3 09:43:11 2026` (UTC), asctime(3)'s shape: the date of an mbox `From ` line.
pub fn ctime(secs: u64) -> String {
    let year = rfc5322_date(secs).split(' ').nth(3).unwrap_or("1970").to_string();
    format!("{} {year}", mailq_time(secs))
}

/// `Thu Dec  3 09:43:11` (UTC): the arrival column of the traditional `mailq`.
pub fn mailq_time(secs: u64) -> String {
    let date = rfc5322_date(secs);
    // "Thu, 3 Dec 2026 09:43:11 +0000" -> weekday, day, month, time
    let parts: Vec<&str> = date.split([',', ' ']).filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [weekday, day, month, _year, time, ..] => format!("{weekday} {month} {day:>2} {time}"),
        _ => date,
    }
}

/// Days since 1970-01-01 to (year, month, day), Gregorian; the well-known era algorithm.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_times() {
        assert_eq!(iso_time(1_796_290_991), "2026-12-03 09:43:11");
        assert_eq!(mailq_time(1_796_290_991), "Thu Dec  3 09:43:11");
        assert_eq!(ctime(1_796_290_991), "Thu Dec  3 09:43:11 2026");
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_392_000 + 3661), "Mon, 23 Nov 2026 01:01:01 +0000");
    }

    #[test]
    fn received_header() {
        let t = Trace {
            helo: "client.test",
            client: Some("::ffff:127.0.0.1".parse().unwrap()),
            client_name: None,
            hidden: false,
            hostname: "mail.example.test",
            protocol: "ESMTP",
            tls: None,
            id: "ABC",
            single_recipient: Some("<alice@example.test>".into()),
            time: 0,
        };
        assert_eq!(
            received(&t),
            "Received: from client.test (unknown [127.0.0.1])\r\n\tby mail.example.test (postern) with ESMTP id ABC\r\n\
             \tfor <alice@example.test>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let many = Trace { single_recipient: None, client: Some("::1".parse().unwrap()), ..t };
        assert!(received(&many).starts_with("Received: from client.test (unknown [IPv6:::1])\r\n"));
        assert!(!received(&many).contains("for <"));
        let tls = Trace { protocol: "ESMTPS", tls: Some("TLSv1.3 with cipher TLS_AES_128_GCM_SHA256".into()), ..many };
        assert!(received(&tls).starts_with(
            "Received: from client.test (unknown [IPv6:::1])\r\n\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n\t\
             by mail.example.test (postern) with ESMTPS id ABC;\r\n"
        ));
        let named = Trace { client_name: Some("mx.client.test"), single_recipient: None, tls: None, ..t };
        assert!(received(&named).starts_with("Received: from client.test (mx.client.test [127.0.0.1])\r\n"));
        let hidden = Trace { client: None, hidden: true, protocol: "ESMTPSA", tls: None, ..tls };
        assert!(
            received(&hidden)
                .starts_with("Received: from client.test\r\n\tby mail.example.test (postern) with ESMTPSA")
        );
    }
}
