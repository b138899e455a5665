//! Milters for mail from postern-sendmail (`non_smtpd_milters`), as Postfix sends them for mail
//! that did not come over SMTP: a connection from `localhost` with no HELO, then MAIL, each
//! RCPT, DATA and the message, over one connection per message.

use std::time::{Duration, Instant};

use super::chain::{Chain, Connect, Verdict};
use super::client::Address;
use super::draft::{Fate, end_of_message};
use crate::config::{Config, MilterDefault};
use crate::spool::maildrop::{Filtered, PickupFilter};
use crate::spool::{Draft, Envelope, SpoolError};

/// RFC 5321 §4.5.3.2.6's ten minutes: the longest the milters may take over one message.
const MESSAGE_TIME: Duration = Duration::from_secs(600);

/// The configuration's `non_smtpd_milters`, owned, so a pickup can use it across a reload.
#[derive(Debug, Clone)]
pub struct LocalMilters {
    addresses: Vec<Address>,
    timeout: Duration,
    default: MilterDefault,
    hostname: String,
    max_size: u64,
}

impl LocalMilters {
    /// `None` when there are none.
    pub fn from_config(config: &Config) -> Option<LocalMilters> {
        (!config.non_smtpd_milters.is_empty()).then(|| LocalMilters {
            addresses: config.non_smtpd_milters.clone(),
            timeout: config.milter_timeout,
            default: config.milter_default_action,
            hostname: config.hostname.clone(),
            max_size: config.message_size_limit,
        })
    }

    /// Asks the milters about the message in `draft`, whose envelope is `envelope`, and makes
    /// their changes in the draft.
    pub fn filter(&self, draft: &mut Draft<'_>, envelope: &Envelope) -> Result<Fate, SpoolError> {
        let deadline = Instant::now() + MESSAGE_TIME;
        let mut chain = Chain::new(&self.addresses, self.timeout, self.default);
        let connect = Connect { hostname: &self.hostname, client_name: None, peer: None, daemon: "postern-sendmail" };
        let mut verdict = chain.connect(&connect, deadline);
        if verdict == Verdict::Go {
            verdict = chain.mail(&envelope.from.to_string(), &[], None, deadline);
        }
        for rcpt in &envelope.rcpts {
            if verdict == Verdict::Go {
                verdict = chain.rcpt(&rcpt.to_string(), deadline);
            }
        }
        if verdict == Verdict::Go {
            verdict = chain.data(deadline);
        }
        match verdict {
            Verdict::Refuse(reply) => Ok(Fate::Refuse(reply)),
            Verdict::Discard => Ok(Fate::Discard("milter triggers DISCARD action")),
            Verdict::Go if !chain.wants_message() => Ok(Fate::Queue),
            Verdict::Go => end_of_message(&mut chain, draft, envelope.clone(), self.max_size, deadline),
        }
    }
}

impl PickupFilter for LocalMilters {
    /// Nobody waits for a reply: a temporary refusal leaves the message in maildrop/ for a
    /// later pickup, and a permanent one holds it for the operator, so nothing is lost.
    fn filter(&self, draft: &mut Draft<'_>, envelope: &Envelope) -> Result<Filtered, SpoolError> {
        Ok(match LocalMilters::filter(self, draft, envelope)? {
            Fate::Queue => Filtered::Queue,
            Fate::Hold(reason) => Filtered::Hold(format!("milter triggers HOLD action: {reason}")),
            Fate::Discard(why) => Filtered::Discard(why.to_string()),
            Fate::Refuse(reply) if reply.code() >= 500 => {
                Filtered::Hold(format!("refused by a milter: {}", reply.summary()))
            }
            Fate::Refuse(reply) => Filtered::Defer(format!("deferred by a milter: {}", reply.summary())),
        })
    }
}
