//! Any bytes as spool/greylist (a file a crash may have torn): it loads without a panic, what
//! it holds survives a rewrite (snapshot, then load) unchanged in size, and an attempt on
//! each triple it holds decides and records at most one line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::policy::greylist::{Greylist, MAX_TRIPLES};

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let (mut list, lines) = Greylist::load(&text);
    assert!(list.len() <= lines && list.len() <= MAX_TRIPLES);
    let now = 1_796_490_000;
    let (again, _) = Greylist::load(&list.snapshot(0));
    assert_eq!(again.len(), list.len());
    for line in text.lines().take(16) {
        if let Some(key) = line.splitn(3, ' ').nth(2) {
            let decision = list.attempt(key, now, 300);
            if let Some(record) = decision.record {
                assert!(record.ends_with('\n') && record.matches('\n').count() == 1, "{record:?}");
            }
        }
    }
});
