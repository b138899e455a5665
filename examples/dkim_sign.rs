//! `make bench`'s signing figure: 4 KiB messages signed per second on one core, with an
//! RSA-2048 key and an Ed25519 key, by the code delivery uses (`postern::dkim::sign`).

use std::path::Path;
use std::time::Instant;

use postern::dkim::{Key, generate, sign};

const MESSAGES: u32 = 2000;

fn main() {
    let body = "x".repeat(70) + "\r\n";
    let message = format!(
        "From: Bench <bench@bench.test>\r\nTo: user@d1.test\r\nSubject: signing\r\nDate: Fri, 4 Dec 2026 03:00:00 +0000\r\n\
         Message-ID: <1@bench.test>\r\n\r\n{}",
        body.repeat(4096 / 72)
    );
    for (name, ed25519) in [("RSA-2048", false), ("Ed25519", true)] {
        let (pem, _) = generate(ed25519, 2048).expect("a key");
        let key = Key::from_pem("bench.test", "s", Path::new("bench"), &pem).expect("the key loads");
        let started = Instant::now();
        for _ in 0..MESSAGES {
            sign(&key, message.as_bytes(), 1_800_000_000).expect("a signature");
        }
        let rate = f64::from(MESSAGES) / started.elapsed().as_secs_f64();
        println!("  {name:9} {rate:7.0} messages/s ({:.0} µs each)", 1e6 / rate);
    }
}
