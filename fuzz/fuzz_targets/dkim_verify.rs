//! Any message with any `DKIM-Signature:` fields, and any key record: the first line of the
//! input is every selector's TXT record, the rest the message. Each signature (at most
//! `MAX_SIGNATURES`) gets one verdict, and a signature whose key record is not a key never
//! passes; never a panic.
#![no_main]
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postern::dkim::verify::{DkimResult, MAX_SIGNATURES, Verifier, parse_tags};
use postern::dns::{DnsFailure, Resolve};

struct Zone<'a>(&'a [u8]);

impl Resolve for Zone<'_> {
    fn txt(&self, name: &str, _: Instant) -> Result<Vec<Vec<u8>>, DnsFailure> {
        match name.len() % 5 {
            0 => Err(DnsFailure::NotFound),
            1 => Err(DnsFailure::Temporary("timed out".into())),
            _ => Ok(vec![self.0.to_vec()]),
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
    let (record, message) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let _ = parse_tags(record);
    let _ = parse_tags(message);
    let (_, at) = postern::message::Headers::parse(message);
    let mut verifier = Verifier::new(&message[..at], 1_800_000_000);
    // The body in uneven pieces, as the server feeds it.
    for piece in message[at..].chunks(7) {
        verifier.feed(piece);
    }
    let verdicts = verifier.finish(&Zone(record), Instant::now() + Duration::from_secs(1));
    assert!(verdicts.len() <= MAX_SIGNATURES);
    if !record.windows(2).any(|w| w == b"p=") {
        assert!(verdicts.iter().all(|v| v.result != DkimResult::Pass), "{verdicts:?}");
    }
});
