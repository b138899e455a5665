//! Any DMARC record, at any name of a tree walk: parsed into a record or a reason, and a
//! check of any `From:` domain against it gives one of the five results, never a panic. The
//! first line is the `From:` domain, the others the TXT records every `_dmarc` name has.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postern::dkim::verify::{DkimResult, Verdict};
use postern::dmarc::{Policy, evaluate, parse_record};
use postern::dns::{DnsFailure, TxtZone};
use postern::spf::SpfResult;

/// Some names have no record, some time out, the rest have every one of `records`.
fn answer(records: &[&[u8]], name: &str) -> Result<Vec<Vec<u8>>, DnsFailure> {
    match name.len() % 4 {
        0 => Err(DnsFailure::NotFound),
        1 if name.len() % 3 == 0 => Err(DnsFailure::Temporary("timed out".into())),
        _ => Ok(records.iter().map(|r| r.to_vec()).collect()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let from = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let records: Vec<&[u8]> = lines.collect();
    for record in &records {
        let _ = parse_record(record);
    }
    let signer =
        Verdict { result: DkimResult::Pass, domain: format!("mail.{from}"), selector: "s".into(), reason: None };
    let until = Instant::now() + Duration::from_secs(1);
    let roll = data.len() as u8 % 100;
    let e = evaluate(
        &from,
        Some((SpfResult::Pass, "other.test")),
        &[signer],
        &TxtZone(|n: &str| answer(&records, n)),
        until,
        roll,
    );
    assert!(["pass", "fail", "none", "temperror", "permerror"].contains(&e.result), "{e:?}");
    if e.result != "fail" {
        assert_eq!(e.applied, Policy::None, "{e:?}");
    }
});
