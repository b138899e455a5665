//! Any delivery log: every line read back writes out as a line that reads back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::spool::log::{MAX_LINE, parse_log};

fuzz_target!(|text: &[u8]| {
    for attempt in parse_log(&String::from_utf8_lossy(text)) {
        let line = attempt.to_line();
        // Recipients are paths of at most 256 octets; every other field is cut to fit.
        assert!(line.len() <= MAX_LINE || attempt.recipient.len() > 256, "{line}");
        let back = parse_log(&line);
        assert_eq!(back.len(), 1, "{line}");
        let (a, b) = (&attempt, &back[0]);
        assert_eq!((a.time, a.outcome, &a.recipient), (b.time, b.outcome, &b.recipient), "{line}");
        // Status, relay and text are cut only at a character boundary.
        for (whole, cut) in [(&a.status, &b.status), (&a.relay, &b.relay), (&a.text, &b.text)] {
            assert!(whole.starts_with(cut.as_str()), "{line}");
        }
    }
});
