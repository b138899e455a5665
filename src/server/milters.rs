//! The session's milters over the server's sockets: each command's step bounded by the
//! command's own deadline (the end of the message is `milter::draft`'s).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use crate::milter::chain::{Chain, Verdict};
use crate::session::Filter;
use crate::smtp::address::{ForwardPath, ReversePath};
use crate::smtp::command::MailParams;

/// A session's milters, asked through `&self` (the session holds them shared; the server
/// asks them at the end of the message, between two of the session's inputs).
pub struct Milters {
    pub chain: RefCell<Chain>,
    /// How long one command's step may take in all (the client waits for our reply).
    pub step_time: Duration,
    /// `{tls_version}` once the session is under TLS.
    pub tls_version: RefCell<Option<String>>,
}

impl Milters {
    fn deadline(&self) -> Instant {
        Instant::now() + self.step_time
    }
}

impl Filter for Milters {
    fn helo(&self, name: &str, tls: bool) -> Verdict {
        let version = self.tls_version.borrow().clone().filter(|_| tls);
        self.chain.borrow_mut().helo(name, version.as_deref(), self.deadline())
    }

    fn mail(&self, from: &ReversePath, params: &MailParams, user: Option<&str>) -> Verdict {
        self.chain.borrow_mut().mail(&from.to_string(), &params.words(), user, self.deadline())
    }

    fn rcpt(&self, to: &ForwardPath) -> Verdict {
        self.chain.borrow_mut().rcpt(&to.to_string(), self.deadline())
    }

    fn data(&self) -> Verdict {
        self.chain.borrow_mut().data(self.deadline())
    }

    fn abort(&self) {
        self.chain.borrow_mut().abort(self.deadline());
    }
}
