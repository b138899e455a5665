//! DKIM signing over any message bytes: the header split, the relaxed canonicalization and
//! the field's folding never panic, and the field is one CRLF-ended header field.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postern::dkim::{Key, generate, relaxed_header, sign};

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
    let _ = postern::dkim::from_domain(data);
});
