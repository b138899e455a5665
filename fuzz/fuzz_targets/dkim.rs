//! DKIM signing over any message bytes: the header split, the relaxed canonicalization and
//! the field's folding never panic, and the field is one CRLF-ended header field; put on
//! top of the message, the verifier passes it with the key's record.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postern::dkim::verify::DkimResult;
use postern::dkim::{Key, generate, relaxed_header, sign};
use postern::dns::TxtZone;

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let (pem, _) = generate(true, 0).unwrap();
        Key::from_pem("example.test", "fuzz", std::path::Path::new("fuzz"), &pem).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let field = sign(key(), data, 1_800_000_000).unwrap();
    assert!(field.starts_with("DKIM-Signature: v=1; ") && field.ends_with("\r\n"));
    assert!(field.lines().skip(1).all(|l| l.starts_with('\t')));
    let _ = relaxed_header("X", data);
    // A first line that continues a field would fold into the signature field itself.
    if !data.starts_with(b" ") && !data.starts_with(b"\t") {
        let mut message = field.into_bytes();
        message.extend_from_slice(data);
        let record = key().dns_record().unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let verdicts = postern::dkim::verify::verify(
            &message,
            &TxtZone(|_: &str| Ok(vec![record.clone().into_bytes()])),
            1_800_000_000,
            until,
        );
        let ours = verdicts.first().map(|v| (v.result, v.reason.clone()));
        assert_eq!(ours, Some((DkimResult::Pass, None)), "{:?}", String::from_utf8_lossy(&message));
    }
    let _ = postern::dkim::from_domain(data);
});
