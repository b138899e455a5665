//! Any message head: parsed without a panic, the header scan agrees with the whole parse under
//! any split, and every address read from a field is one word; the filter that removes
//! forged Authentication-Results: fields gives the same octets under any split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::message::{FieldFilter, HeaderScan, Headers, addresses, message_id};
use postern::policy::authres::names_us;

fuzz_target!(|data: &[u8]| {
    let (headers, body) = Headers::parse(data);
    assert!(body <= data.len());
    let split = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    let mut scan = HeaderScan::new(1 << 20);
    for chunk in data.chunks(split) {
        scan.feed(chunk);
    }
    assert_eq!(scan.headers().fields.len(), headers.fields.len());
    let filter = |pieces: usize| {
        let mut f = FieldFilter::new("authentication-results", |v: &[u8]| names_us(v, "mail.example.test"));
        let mut out = Vec::new();
        for chunk in data.chunks(pieces) {
            f.feed(chunk, &mut out);
        }
        f.finish(&mut out);
        (out, f.removed())
    };
    let (whole, removed) = filter(data.len().max(1));
    assert_eq!(filter(split), (whole.clone(), removed));
    assert!(whole.len() <= data.len());
    for field in &headers.fields {
        let value = field.value();
        let _ = message_id(&value);
        for a in addresses(&value) {
            assert!(!a.is_empty() && !a.contains(char::is_whitespace));
        }
    }
});
