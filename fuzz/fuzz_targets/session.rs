//! The server session fed arbitrary lines: every input gets a reply or a close, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::config::Config;
use postern::policy::LocalPolicy;
use postern::session::{Action, Input, Session, SessionConfig};
use postern::spool::QueueId;

fuzz_target!(|data: &[u8]| {
    let text = "local_domains = example.test\ntrusted_networks = 192.0.2.0/24\nrecipient_delimiter = +\n";
    let policy = LocalPolicy::load(&Config::parse(text, "fuzz").unwrap()).unwrap();
    let config = SessionConfig {
        hostname: "mail.example.test".into(),
        message_size_limit: 1000,
        max_recipients: 100,
        hard_error_limit: 20,
        soft_error_limit: 10,
        junk_command_limit: 100,
        vrfy: data.first().is_some_and(|b| b & 1 == 1),
        expn: data.first().is_some_and(|b| b & 2 == 2),
        tls_available: true,
        local_submission: false,
    };
    let client = if data.first().is_some_and(|b| b & 4 == 4) { "192.0.2.9" } else { "198.51.100.1" };
    let (mut session, _greeting) = Session::new(&config, &policy, client.parse().ok());
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let step = session.handle(Input::Line(line));
        let step = match step.action {
            Action::ReceiveData(_) => session.handle(Input::DataEnd(Ok(QueueId::generate()))),
            Action::StartTls => session.handle(Input::TlsStarted),
            _ => step,
        };
        assert!(step.reply.is_some() || step.action == Action::Close);
        if step.action == Action::Close {
            return;
        }
    }
});
