//! Any bytes as an MTA-STS policy server's HTTP reply, as the policy it carries, as a
//! cache file and as `_mta-sts` TXT records: a result or a reason, never a panic; a policy
//! that parses keeps its limits, and one written to the cache reads back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::mtasts::{Cached, MAX_AGE_LIMIT, MAX_POLICY, Mode, Policy, parse_record, parse_response};

fuzz_target!(|bytes: &[u8]| {
    for eof in [false, true] {
        if let Ok(Some(body)) = parse_response(bytes, eof) {
            assert!(body.len() <= MAX_POLICY);
        }
    }
    if let Ok(policy) = Policy::parse(bytes) {
        assert!(policy.max_age <= MAX_AGE_LIMIT);
        assert!(policy.mode == Mode::None || !policy.mx.is_empty());
        for mx in &policy.mx {
            let host = mx.strip_prefix("*.").map_or_else(|| mx.clone(), |parent| format!("a.{parent}"));
            assert!(policy.allows(&host), "{mx}");
        }
        let cached = Cached { id: "fuzz".into(), fetched: 1, policy, body: bytes.to_vec() };
        assert_eq!(Cached::from_file(&cached.to_file()), Ok(cached));
    }
    let _ = Cached::from_file(bytes);
    let records: Vec<Vec<u8>> = bytes.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    let _ = parse_record(&records);
});
