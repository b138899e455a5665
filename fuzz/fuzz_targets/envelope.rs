//! Any spool file head: refused, or parsed into an envelope that writes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::spool::Envelope;

fuzz_target!(|file: &[u8]| {
    let Ok((envelope, _)) = Envelope::parse(file) else { return };
    let (text, _) = envelope.to_text();
    let (again, end) = Envelope::parse(text.as_bytes()).expect("a written envelope parses");
    assert_eq!(again, envelope);
    assert_eq!(end, text.len());
});
