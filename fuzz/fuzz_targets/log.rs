//! Any delivery log: every line read back writes out as a line that reads back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::spool::envelope::escape;
use postern::spool::log::{MAX_LINE, PROTECTION_ROOM, Where, parse_log};

fuzz_target!(|text: &[u8]| {
    for attempt in parse_log(&String::from_utf8_lossy(text)) {
        let line = attempt.to_line();
        // Recipients are paths of at most 256 octets; every other field is cut to fit.
        assert!(line.len() <= MAX_LINE || attempt.recipient.to_string().len() > 256, "{line}");
        let back = parse_log(&line);
        assert_eq!(back.len(), 1, "{line}");
        let (a, b) = (&attempt, &back[0]);
        assert_eq!((a.time, a.outcome, &a.recipient), (b.time, b.outcome, &b.recipient), "{line}");
        // A status is left out only when an over-long recipient took all the line.
        assert!(a.status == b.status || (b.status.is_none() && a.recipient.to_string().len() > 256), "{line}");
        // A relay without room in the line (its share is 512 octets escaped, less when the
        // recipient is long, and the end of the line is kept for the TLS policy) is left out
        // whole, never cut into another value.
        let escaped = escape(&a.relay.to_string()).len();
        let left_out =
            b.relay == Where::Nowhere && (escaped > 512 || line.len() + escaped + PROTECTION_ROOM > MAX_LINE);
        assert!(a.relay == b.relay || left_out, "{line}");
        assert_eq!(a.protection, b.protection, "{line}");
        // The text is cut only at a character boundary.
        assert!(a.text.starts_with(b.text.as_str()), "{line}");
    }
});
