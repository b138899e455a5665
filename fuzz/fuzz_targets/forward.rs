//! Any `~/.forward` (or `:include:` list) text: split into entries without a panic; each is
//! trimmed, never empty, on one line, and a `|command` entry is one the helper would run.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::alias::{entries, forward_names};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for entry in entries(&text) {
        assert!(!entry.is_empty() && entry.trim() == entry && !entry.contains('\n'), "{entry:?}");
        let bare = entry.strip_prefix('"').and_then(|e| e.strip_suffix('"')).unwrap_or(&entry).trim();
        if let Some(command) = bare.strip_prefix('|').map(str::trim).filter(|c| !c.is_empty()) {
            assert!(forward_names(&text, &format!("|{command}")), "{entry:?}");
        }
    }
});
