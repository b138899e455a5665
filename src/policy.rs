//! What the SMTP session asks before it accepts a recipient: is the domain ours, does the user exist, may this client relay.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::Config;
use crate::smtp::address::{ForwardPath, Host, Mailbox};
use crate::table::{self, TableError};

/// Why a recipient or transaction is refused; `smtp::reply` turns each into its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A local domain without that user (`550 5.1.1`).
    UnknownUser(String),
    /// Not ours, and the client may not relay (`554 5.7.1`).
    RelayDenied(String),
    /// Over `max_recipients` (`452 4.5.3`, §4.5.3.1.10).
    TooManyRecipients,
    /// DATA after every RCPT was refused (`554 5.5.1`).
    NoValidRecipients,
    /// A non-ASCII address without SMTPUTF8 (`553 5.6.7`, RFC 6531 §3.5).
    NeedsSmtputf8,
    /// Declared SIZE over the limit (`552 5.3.4`, RFC 1870).
    MessageTooBig,
    /// An ESMTP parameter after HELO, which offers none (`555 5.5.4`).
    NotOffered(&'static str),
}

/// Where an accepted recipient will go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Local,
    Relay,
}

/// The questions the session asks; `LocalPolicy` answers them from the configuration.
pub trait Policy: Send + Sync {
    fn is_trusted(&self, client: Option<IpAddr>) -> bool;
    fn check_recipient(&self, to: &ForwardPath, may_relay: bool) -> Result<Destination, Refusal>;
    /// VRFY: the full address of a local user, when the name is one.
    fn verify(&self, name: &str) -> Option<String>;
    /// EXPN: the members of a local alias.
    fn expand(&self, name: &str) -> Option<Vec<String>>;
}

/// The policy of one configuration: local domains, the user tables, trusted networks.
pub struct LocalPolicy {
    config: Config,
    /// Names from the mailboxes map; `None` when every safe name has a mailbox.
    mailboxes: Option<HashSet<String>>,
    aliases: Vec<table::Entry>,
}

impl LocalPolicy {
    /// Loads the mailboxes and aliases files the configuration names.
    pub fn load(config: &Config) -> Result<LocalPolicy, TableError> {
        let mailboxes = match &config.mailboxes {
            Some(path) => Some(table::load(path)?.into_iter().map(|e| e.name).collect()),
            None => None,
        };
        let aliases = match &config.aliases {
            Some(path) => table::load(path)?,
            None => Vec::new(),
        };
        Ok(LocalPolicy { config: config.clone(), mailboxes, aliases })
    }

    fn is_local_domain(&self, host: &Host) -> bool {
        match host {
            Host::Domain(d) => self.config.local_domains.iter().any(|l| *l == d.folded()),
            Host::Literal(_) => false,
        }
    }

    /// The name a local part is looked up under: folded to lower case (§2.4 allows
    /// this for local delivery only), and without its extension when the full name is unknown.
    fn lookup_name(&self, local_part: &str) -> Option<String> {
        let folded = local_part.to_lowercase();
        if self.exists(&folded) {
            return Some(folded);
        }
        let base = folded.split(|c| self.config.recipient_delimiter.contains(c)).next()?;
        let stripped = !self.config.recipient_delimiter.is_empty() && base.len() < folded.len();
        (stripped && !base.is_empty() && self.exists(base)).then(|| base.to_string())
    }

    fn exists(&self, name: &str) -> bool {
        if name == "postmaster" || self.aliases.iter().any(|e| e.name == name) {
            return true;
        }
        match &self.mailboxes {
            Some(names) => names.contains(name),
            None => is_safe_mailbox_name(name),
        }
    }

    fn local_user(&self, mailbox: &Mailbox) -> Option<String> {
        self.lookup_name(&mailbox.local_part_text())
    }
}

/// A name that may become a directory through `mailbox_template`: ASCII letters,
/// digits and `. - _ +`, no leading dot, no `..`, at most 64 octets. Anything else
/// (a `/`, a quote, a `|`) has no mailbox, so it can never reach a path.
pub fn is_safe_mailbox_name(name: &str) -> bool {
    let chars_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    chars_ok && !name.is_empty() && name.len() <= 64 && !name.starts_with('.') && !name.contains("..")
}

impl Policy for LocalPolicy {
    fn is_trusted(&self, client: Option<IpAddr>) -> bool {
        self.config.is_trusted(client)
    }

    fn check_recipient(&self, to: &ForwardPath, may_relay: bool) -> Result<Destination, Refusal> {
        let mailbox = match to {
            ForwardPath::Postmaster => return Ok(Destination::Local), // §4.5.1
            ForwardPath::Mailbox(m) => m,
        };
        if self.is_local_domain(mailbox.host()) {
            return match self.local_user(mailbox) {
                Some(_) => Ok(Destination::Local),
                None => Err(Refusal::UnknownUser(to.to_string())),
            };
        }
        if may_relay { Ok(Destination::Relay) } else { Err(Refusal::RelayDenied(to.to_string())) }
    }

    fn verify(&self, name: &str) -> Option<String> {
        let text = name.trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = match text.rsplit_once('@') {
            Some((l, d)) => (l, d.to_lowercase()),
            None => (text, self.config.local_domains.first()?.clone()),
        };
        if !self.config.local_domains.contains(&domain) {
            return None;
        }
        self.lookup_name(local).map(|user| format!("{user}@{domain}"))
    }

    fn expand(&self, name: &str) -> Option<Vec<String>> {
        let local = name.trim_start_matches('<').trim_end_matches('>');
        let local = local.split('@').next()?.to_lowercase();
        self.aliases.iter().find(|e| e.name == local).map(|e| e.values.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str, mailboxes: Option<&[&str]>, aliases: &[(&str, &str)]) -> LocalPolicy {
        let text = format!("local_domains = example.test, localhost\nrecipient_delimiter = +\n{extra}");
        let config = Config::parse(&text, "test").unwrap();
        let mailboxes = mailboxes.map(|m| m.iter().map(|s| s.to_string()).collect());
        let aliases = aliases
            .iter()
            .map(|(n, v)| table::Entry { name: n.to_string(), values: vec![v.to_string()], line: 1 })
            .collect();
        LocalPolicy { config, mailboxes, aliases }
    }

    fn rcpt(text: &str) -> ForwardPath {
        ForwardPath::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn with_a_mailboxes_map_only_its_names_exist() {
        let p = policy("", Some(&["alice"]), &[("team", "alice")]);
        assert_eq!(p.check_recipient(&rcpt("alice@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("Alice@EXAMPLE.TEST"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("alice+remote.test@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("team@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&rcpt("POSTMASTER@example.test"), false), Ok(Destination::Local));
        assert_eq!(p.check_recipient(&ForwardPath::Postmaster, false), Ok(Destination::Local));
        assert!(matches!(p.check_recipient(&rcpt("relaytest@example.test"), false), Err(Refusal::UnknownUser(_))));
    }

    #[test]
    fn without_a_map_unsafe_names_do_not_exist() {
        let p = policy("", None, &[]);
        assert_eq!(p.check_recipient(&rcpt("bob@localhost"), false), Ok(Destination::Local));
        for bad in [
            "\"../x\"@localhost",
            "\"a/b\"@localhost",
            "a/b@localhost",
            "|cmd@localhost",
            "\"|id\"@localhost",
            "relaytest%remote.test@localhost",
            "remote.test!relaytest@localhost",
            "\"relaytest@remote.test\"@localhost",
        ] {
            assert!(matches!(p.check_recipient(&rcpt(bad), false), Err(Refusal::UnknownUser(_))), "{bad}");
        }
    }

    #[test]
    fn relay_needs_trust() {
        let p = policy("", None, &[]);
        for r in [
            "relaytest@remote.test",
            "a@evilexample.test",
            "a@sub.example.test",
            "a@example.test.remote.test",
            "a@[127.0.0.1]",
        ] {
            assert!(matches!(p.check_recipient(&rcpt(r), false), Err(Refusal::RelayDenied(_))), "{r}");
            assert_eq!(p.check_recipient(&rcpt(r), true), Ok(Destination::Relay));
        }
    }

    #[test]
    fn vrfy_and_expn() {
        let p = policy("", Some(&["alice"]), &[("team", "bob@remote.test")]);
        assert_eq!(p.verify("alice").as_deref(), Some("alice@example.test"));
        assert_eq!(p.verify("<alice@localhost>").as_deref(), Some("alice@localhost"));
        assert_eq!(p.verify("mallory"), None);
        assert_eq!(p.verify("alice@remote.test"), None);
        assert_eq!(p.expand("team"), Some(vec!["bob@remote.test".to_string()]));
        assert_eq!(p.expand("alice"), None);
    }
}
