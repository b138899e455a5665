//! Any bytes as what a read of an inotify descriptor gave: names without NUL, never a
//! panic (the instant delivery process reads new/ this way).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::sys::{Names, parse_events};

fuzz_target!(|bytes: &[u8]| {
    let mut out = Names::default();
    parse_events(bytes, &mut out);
    for name in &out.names {
        assert!(!name.is_empty() && !name.as_encoded_bytes().contains(&0));
    }
    assert!(out.names.len() <= bytes.len() / 16);
});
