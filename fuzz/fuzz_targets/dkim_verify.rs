//! Any message with any `DKIM-Signature:` fields, and any key record: the first line of the
//! input is every selector's TXT record, the rest the message. Each signature (at most
//! `MAX_SIGNATURES`) gets one verdict, and a signature whose key record is not a key never
//! passes; never a panic.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postern::dkim::verify::{DkimResult, MAX_SIGNATURES, Verifier, parse_tags};
use postern::dns::{DnsFailure, TxtZone};

/// Some names have no key, some time out, the rest have `record`.
fn key(record: &[u8], name: &str) -> Result<Vec<Vec<u8>>, DnsFailure> {
    match name.len() % 5 {
        0 => Err(DnsFailure::NotFound),
        1 => Err(DnsFailure::Temporary("timed out".into())),
        _ => Ok(vec![record.to_vec()]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (record, message) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let _ = parse_tags(record);
    let _ = parse_tags(message);
    let (headers, at) = postern::message::Headers::parse(message);
    let mut verifier = Verifier::new(&headers, 1_800_000_000);
    // The body in uneven pieces, as the server feeds it.
    for piece in message[at..].chunks(7) {
        verifier.feed(piece);
    }
    let verdicts =
        verifier.finish(&headers, &TxtZone(|n: &str| key(record, n)), Instant::now() + Duration::from_secs(1));
    assert!(verdicts.len() <= MAX_SIGNATURES);
    if !record.windows(2).any(|w| w == b"p=") {
        assert!(verdicts.iter().all(|v| v.result != DkimResult::Pass), "{verdicts:?}");
    }
});
