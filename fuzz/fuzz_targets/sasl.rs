//! AUTH responses (RFC 4954, RFC 4616): any bytes decode, parse and step an exchange without a
//! panic, and what base64 encoded comes back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::smtp::client::base64;
use postern::smtp::sasl::{Exchange, Mechanism, decode_base64, parse_plain};

fuzz_target!(|data: &[u8]| {
    let _ = decode_base64(data);
    let _ = parse_plain(data);
    assert_eq!(decode_base64(base64(data).as_bytes()).as_deref(), Some(data));
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let (mut exchange, _) = Exchange::start(mechanism, None);
        for line in data.split(|&b| b == b'\n').take(8) {
            let _ = exchange.respond(line);
        }
    }
});
