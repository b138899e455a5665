//! Any answer line from the TLS file reader: two lengths no larger than a file may be, or an
//! error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::server::tls_files::{MAX_FILE, parse_answer};

fuzz_target!(|bytes: &[u8]| {
    let line = String::from_utf8_lossy(bytes);
    if let Ok((cert, key)) = parse_answer(&line) {
        assert!(cert as u64 <= MAX_FILE && key as u64 <= MAX_FILE);
    }
});
