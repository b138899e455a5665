//! Any message head: parsed without a panic, the header scan agrees with the whole parse under
//! any split, and every address read from a field is one word.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::message::{HeaderScan, Headers, addresses, message_id};

fuzz_target!(|data: &[u8]| {
    let (headers, body) = Headers::parse(data);
    assert!(body <= data.len());
    let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let mut scan = HeaderScan::new(1 << 20);
    for chunk in data.chunks(split) {
        scan.feed(chunk);
    }
    assert_eq!(scan.headers().fields.len(), headers.fields.len());
    for field in &headers.fields {
        let value = field.value();
        let _ = message_id(&value);
        for a in addresses(&value) {
            assert!(!a.is_empty() && !a.contains(char::is_whitespace));
        }
    }
});
