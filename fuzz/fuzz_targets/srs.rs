//! Any local part given to the SRS decoder is turned back or refused, never a panic; any
//! sender we forward turns back into itself (an SRS0 one into the first forwarder's).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::srs::{Srs, is_srs};

fuzz_target!(|bytes: &[u8]| {
    let text = String::from_utf8_lossy(bytes);
    let srs = Srs::new(b"fuzz", "forward.test");
    let now = 1_796_490_000;
    if let Ok((local, domain)) = srs.reverse(&text, now) {
        assert!(!local.is_empty() && !domain.is_empty(), "{text}");
    }
    let (local, domain) = text.rsplit_once('@').unwrap_or((&text, "origin.test"));
    if local.is_empty() || domain.is_empty() || domain.contains('=') {
        return;
    }
    let forwarded = srs.forward(local, domain, now);
    assert!(is_srs(&forwarded), "{forwarded}");
    let back = srs.reverse(&forwarded, now);
    if !is_srs(local) {
        assert_eq!(back, Ok((local.to_string(), domain.to_string())), "{forwarded}");
    } else if local[..4].eq_ignore_ascii_case("SRS0") {
        assert_eq!(back, Ok((format!("SRS0{}", &local[4..]), domain.to_string())), "{forwarded}");
    }
});
