//! Any bytes from a milter, split anywhere: packets come out whole or as named garbage, every
//! packet reads as an answer or as garbage, never a panic; a refusal is always a 4xx or 5xx.
//! Every change read is applied to a message's header: whatever a milter sends, the header
//! section written from it reads back as the same fields, ended by its blank line.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::message::Headers;
use postern::milter::edit::{Edited, Replacing};
use postern::milter::protocol::{Answer, OUR_ACTIONS, Packets, answer};

fuzz_target!(|bytes: &[u8]| {
    let Some((&cut, bytes)) = bytes.split_first() else { return };
    let cut = usize::from(cut).min(bytes.len());
    let mut edited = Edited::new(b"Received: by here\r\nSubject: hi\r\n\r\n");
    let mut replacing = Replacing::default();
    let mut packets = Packets::default();
    packets.push(&bytes[..cut]);
    let mut seen = 0;
    loop {
        match packets.next_packet() {
            Ok(Some((command, data))) => {
                seen += 5 + data.len();
                match answer(command, &data) {
                    Ok(Answer::Refuse(reply)) => assert!((400..600).contains(&reply.code()), "{reply:?}"),
                    Ok(Answer::Change(change)) => edited.apply(change, OUR_ACTIONS, &mut replacing),
                    _ => {}
                }
            }
            Ok(None) if cut < bytes.len() => {
                packets.push(&bytes[cut..]);
                cut_done(packets, seen, bytes.len());
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let header = edited.header_bytes();
    let (headers, end) = Headers::parse(&header);
    assert_eq!(end, header.len());
    assert_eq!(headers.fields.len(), edited.fields.len());
    edited.finish_body(replacing);
    if let Some(body) = &edited.body {
        assert!(!body.starts_with(b"\n") && !body.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
    }
});

fn cut_done(mut packets: Packets, mut seen: usize, total: usize) {
    while let Ok(Some((command, data))) = packets.next_packet() {
        seen += 5 + data.len();
        let _ = answer(command, &data);
    }
    assert!(seen <= total);
}
