//! Any SPF record, with any records behind its includes: parsed into a record or a reason,
//! evaluated to one of the seven results within the limits of RFC 7208 §4.6.4, never a panic.
//! Lines of the input are the TXT records every name has; every name also has two addresses,
//! an MX and a PTR name, so that each mechanism and macro runs.
#![no_main]
use std::cell::Cell;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postern::dns::{DnsFailure, Resolve};
use postern::spf::{self, MAX_DNS_TERMS, MAX_MX_NAMES, Request};

struct Zone<'a> {
    records: Vec<&'a [u8]>,
    questions: Cell<u32>,
}

impl Zone<'_> {
    fn ask(&self, name: &str) -> Result<(), DnsFailure> {
        self.questions.set(self.questions.get() + 1);
        match name.len() % 7 {
            0 => Err(DnsFailure::NotFound),
            1 => Err(DnsFailure::NoData),
            _ => Ok(()),
        }
    }
}

impl Resolve for Zone<'_> {
    fn txt(&self, name: &str, _: Instant) -> Result<Vec<Vec<u8>>, DnsFailure> {
        self.ask(name)?;
        Ok(self.records.iter().map(|r| r.to_vec()).collect())
    }
    fn ips(&self, name: &str, v6: bool, _: Instant) -> Result<Vec<IpAddr>, DnsFailure> {
        self.ask(name)?;
        Ok(if v6 { vec!["2001:db8::1".parse().unwrap()] } else { vec!["192.0.2.1".parse().unwrap()] })
    }
    fn mx(&self, name: &str, _: Instant) -> Result<Vec<(u16, String)>, DnsFailure> {
        self.ask(name)?;
        Ok(vec![(10, format!("mx.{name}"))])
    }
    fn ptr(&self, _: IpAddr, _: Instant) -> Result<Vec<String>, DnsFailure> {
        Ok(vec!["host.example.test".into()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    if let Ok(text) = std::str::from_utf8(first) {
        let _ = spf::parse_record(text);
        let _ = spf::parse_macro_string(text, true);
    }
    let records: Vec<&[u8]> = std::iter::once(first).chain(lines).collect();
    let zone = Zone { records, questions: Cell::new(0) };
    for ip in ["192.0.2.1", "2001:db8::1"] {
        let request = Request {
            ip: ip.parse().unwrap(),
            helo: "mx.example.test",
            local: "a.b-c",
            domain: "example.test",
            receiver: "mail.example.test",
            deadline: Instant::now() + Duration::from_secs(20),
        };
        let outcome = spf::check_host(&zone, &request);
        let _ = outcome.result.as_str();
    }
    // The terms, their MX hosts, a PTR's names, the record and an explanation, per check.
    let most = (MAX_DNS_TERMS + 2) * (MAX_MX_NAMES as u32 + 2) * 2;
    assert!(zone.questions.get() <= most, "{} questions", zone.questions.get());
});
