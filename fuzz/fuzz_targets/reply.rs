//! Any server bytes: read as a reply or refused as a protocol error, never a panic, bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let mut input = std::io::BufReader::new(bytes);
    while let Ok(reply) = postern::client::read_reply(&mut input) {
        assert!((200..600).contains(&reply.code));
        let _ = (reply.status(), postern::client::Extensions::parse(&reply));
    }
});
