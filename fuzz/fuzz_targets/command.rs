//! Any bytes as one command line: parsed or refused with a SyntaxError, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let _ = postern::smtp::command::parse_command(line);
});
