//! Any server bytes: the push parser says Partial, a reply, or an error; a reply's own bytes
//! are Partial at every shorter prefix, so the answer never depends on how reads split them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::smtp::client::Extensions;
use postern::smtp::reply::{MAX_RECEIVED_LINE, MAX_RECEIVED_LINES, Parsed, parse_reply};

fuzz_target!(|bytes: &[u8]| {
    let mut rest = bytes;
    while let Parsed::Reply(reply, used) = parse_reply(rest) {
        assert!(used > 0 && used <= rest.len());
        assert!(used <= MAX_RECEIVED_LINE * MAX_RECEIVED_LINES);
        assert!((200..600).contains(&reply.code()) && reply.agrees());
        if used <= 4096 {
            for cut in [0, used / 2, used - 1] {
                assert_eq!(parse_reply(&rest[..cut]), Parsed::Partial, "prefix {cut} of {used}");
            }
        }
        let _ = (reply.summary(), Extensions::parse(&reply));
        rest = &rest[used..];
    }
});
