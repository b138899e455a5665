//! postern: postern-smtpd, postern-deliver and postern-queue in one program, which is what it
//! is run as (`make install` links the three names to it). One program, not three, because the
//! three link the same library, TLS and resolver: apart the three were 6.1 MiB stripped, together
//! they are a little more than one of them. postern-sendmail stays a program of its own: it may
//! be setgid, and it should be small.

use std::path::Path;
use std::process::ExitCode;

mod deliver;
mod queue;
mod smtpd;

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = Path::new(&argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match name.as_str() {
        "postern-smtpd" => smtpd::main(),
        "postern-deliver" => deliver::main(),
        "postern-queue" => queue::main(),
        _ => {
            eprintln!(
                "{name}: run this program as postern-smtpd, postern-deliver or postern-queue \
                 (links to it, as make install makes them)"
            );
            ExitCode::from(2)
        }
    }
}
