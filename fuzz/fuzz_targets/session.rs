//! The server session fed arbitrary lines: every input gets a reply or a close, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::config::Config;
use postern::policy::{Authenticator, LocalPolicy, Verified};
use postern::session::{Action, Input, Session, SessionConfig};
use postern::spool::QueueId;

/// alice's password is "pw", carol's cannot be checked now; nobody is ever locked out.
struct Users;

impl Authenticator for Users {
    fn locked_out(&self, _: Option<std::net::IpAddr>) -> bool {
        false
    }
    fn verify(&self, _: Option<std::net::IpAddr>, user: &str, password: &[u8]) -> Verified {
        match (user, password) {
            ("alice", b"pw") => Verified::Yes,
            ("carol", _) => Verified::Unavailable,
            _ => Verified::No,
        }
    }
    fn may_send_as(&self, user: &str, address: &str) -> bool {
        address == format!("{user}@example.test")
    }
}

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
        submission: data.first().is_some_and(|b| b & 8 == 8),
        auth_plaintext: data.first().is_some_and(|b| b & 16 == 16),
    };
    let client = if data.first().is_some_and(|b| b & 4 == 4) { "192.0.2.9" } else { "198.51.100.1" };
    let (session, _greeting) = Session::new(&config, &policy, client.parse().ok());
    let mut session = session.with_authenticator(&Users);
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
