//! Any bytes from a milter, split anywhere: packets come out whole or as named garbage, every
//! packet reads as an answer or as garbage, never a panic; a refusal is always a 4xx or 5xx.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::milter::protocol::{Answer, Packets, answer};

fuzz_target!(|bytes: &[u8]| {
    let Some((&cut, bytes)) = bytes.split_first() else { return };
    let cut = usize::from(cut).min(bytes.len());
    let mut packets = Packets::default();
    packets.push(&bytes[..cut]);
    let mut seen = 0;
    loop {
        match packets.next_packet() {
            Ok(Some((command, data))) => {
                seen += 5 + data.len();
                if let Ok(Answer::Refuse(reply)) = answer(command, &data) {
                    assert!((400..600).contains(&reply.code()), "{reply:?}");
                }
            }
            Ok(None) if cut < bytes.len() => {
                packets.push(&bytes[cut..]);
                return drain(packets, seen, bytes.len());
            }
            Ok(None) | Err(_) => return,
        }
    }
});

fn drain(mut packets: Packets, mut seen: usize, total: usize) {
    while let Ok(Some((command, data))) = packets.next_packet() {
        seen += 5 + data.len();
        let _ = answer(command, &data);
    }
    assert!(seen <= total);
}
