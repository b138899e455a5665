//! Any lines from what claims to be Dovecot's auth socket: the client answers without a
//! panic, and says yes only after a handshake that ended in DONE and an `OK` for its request.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::dovecot::{Answer, Exchange, Step};

fuzz_target!(|data: &[u8]| {
    let mut exchange = Exchange::new("alice", b"pw", None, 1);
    let mut step = exchange.start();
    let mut seen: Vec<&[u8]> = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if let Step::Done(answer) = &step {
            if let Answer::Yes(_) = answer {
                let done = seen.iter().position(|l| l.split(|&b| b == b'\t').next() == Some(b"DONE"));
                let ok = seen.iter().rposition(|l| l.starts_with(b"OK\t1"));
                assert!(matches!((done, ok), (Some(d), Some(o)) if d < o), "{seen:?}");
            }
            return;
        }
        seen.push(line);
        step = exchange.receive(line);
    }
});
