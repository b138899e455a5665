//! Any bytes as a resolver's reply to our TLSA question: an answer or a temporary failure,
//! never a panic, and records only with the AD bit; any bytes as a certificate chain to
//! match: a verdict, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::dane::{Answer, Tlsa, read_answer, verify};

fuzz_target!(|bytes: &[u8]| {
    let name = "_25._tcp.mx.example.test";
    let id = bytes.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    if let Ok(Some(Answer::Secure(records))) = read_answer(bytes, id, name) {
        assert!(!records.is_empty());
        assert!(bytes.len() > 3 && bytes[3] & 0x20 != 0, "records without the AD bit");
    }
    if let Ok(cert) = openssl::x509::X509::from_der(bytes) {
        let records: Vec<Tlsa> = (0..3)
            .map(|matching| Tlsa { usage: 3, selector: 1, matching, data: bytes.iter().take(64).copied().collect() })
            .collect();
        let _ = verify(&records, &[cert.clone(), cert], "mx.example.test");
    }
});
