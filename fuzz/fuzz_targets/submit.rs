//! Any standard input to `sendmail`: normalized and prepared without a panic; what comes out
//! has CRLF line ends only, a header with From:, Date: and Message-ID:, no Bcc: with -t, and
//! the body it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::message::Headers;
use postern::submit::{Request, normalize, prepare};

fuzz_target!(|data: &[u8]| {
    let flags = data.first().copied().unwrap_or(0);
    let message = normalize(data, flags & 1 == 1);
    assert!(!message.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
    let recipients = if flags & 2 == 2 { vec!["root".to_string()] } else { Vec::new() };
    let req = Request {
        login: "alice",
        full_name: Some("A \"quoted\" name"),
        sender: (flags & 4 == 4).then_some(""),
        origin: "example.test",
        hostname: "mail.example.test",
        id: "ID",
        now: 1_796_290_991,
        extract: flags & 8 == 8,
        recipients: &recipients,
    };
    if let Ok(p) = prepare(&req, &message) {
        assert!(!p.rcpts.is_empty());
        let (headers, _) = Headers::parse(&p.message);
        for name in ["From", "Date", "Message-ID"] {
            assert!(headers.has(name), "{name} missing");
        }
        if req.extract {
            assert!(!headers.has("Bcc"));
        }
    }
});
