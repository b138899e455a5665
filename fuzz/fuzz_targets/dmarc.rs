//! Any DMARC record, at any name of a tree walk: parsed into a record or a reason, and a
//! check of any `From:` domain against it gives one of the five results, never a panic. The
//! first line is the `From:` domain, the others the TXT records every `_dmarc` name has.
#![no_main]
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postern::dkim::verify::{DkimResult, Verdict};
use postern::dmarc::{Policy, evaluate, parse_record};
use postern::dns::{DnsFailure, Resolve};
use postern::spf::SpfResult;

struct Zone<'a>(Vec<&'a [u8]>);

impl Resolve for Zone<'_> {
    fn txt(&self, name: &str, _: Instant) -> Result<Vec<Vec<u8>>, DnsFailure> {
        match name.len() % 4 {
            0 => Err(DnsFailure::NotFound),
            1 if name.len() % 3 == 0 => Err(DnsFailure::Temporary("timed out".into())),
            _ => Ok(self.0.iter().map(|r| r.to_vec()).collect()),
        }
    }
    fn ips(&self, _: &str, _: bool, _: Instant) -> Result<Vec<IpAddr>, DnsFailure> {
        Err(DnsFailure::NotFound)
    }
    fn mx(&self, _: &str, _: Instant) -> Result<Vec<(u16, String)>, DnsFailure> {
        Err(DnsFailure::NotFound)
    }
    fn ptr(&self, _: IpAddr, _: Instant) -> Result<Vec<String>, DnsFailure> {
        Err(DnsFailure::NotFound)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let from = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let records: Vec<&[u8]> = lines.collect();
    for record in &records {
        let _ = parse_record(record);
    }
    let signer = Verdict {
        result: DkimResult::Pass,
        domain: format!("mail.{from}"),
        selector: "s".into(),
        reason: None,
        testing: false,
    };
    let until = Instant::now() + Duration::from_secs(1);
    let roll = data.len() as u8 % 100;
    let e = evaluate(&from, Some((SpfResult::Pass, "other.test")), &[signer], &Zone(records), until, roll);
    assert!(["pass", "fail", "none", "temperror", "permerror"].contains(&e.result), "{e:?}");
    if e.result != "fail" {
        assert_eq!(e.applied, Policy::None, "{e:?}");
    }
});
