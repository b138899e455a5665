//! What the SMTP session asks before it accepts a recipient: is the domain ours, does the user exist, may this client relay.

use std::net::IpAddr;

use crate::alias::LocalUsers;
use crate::config::Config;
use crate::smtp::address::ForwardPath;
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::table::TableError;

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

impl From<&Refusal> for Reply {
    fn from(e: &Refusal) -> Reply {
        let es = EnhancedStatus::new;
        match e {
            Refusal::UnknownUser(who) => Reply::no_such_user(who),
            Refusal::RelayDenied(who) => Reply::new(554, es(5, 7, 1), format!("{who}: Relay access denied")),
            Refusal::TooManyRecipients => Reply::new(452, es(4, 5, 3), "Error: too many recipients"),
            Refusal::NoValidRecipients => Reply::new(554, es(5, 5, 1), "Error: no valid recipients"),
            Refusal::NeedsSmtputf8 => {
                Reply::new(553, es(5, 6, 7), "Error: non-ASCII address needs the SMTPUTF8 parameter")
            }
            Refusal::MessageTooBig => Reply::new(552, es(5, 3, 4), "Error: message size exceeds fixed limit"),
            Refusal::NotOffered(name) => {
                Reply::new(555, es(5, 5, 4), format!("Error: {name} was not offered; use EHLO"))
            }
        }
    }
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

/// What AUTH asks (RFC 4954); `crate::auth` answers from the `auth_users` and
/// `auth_senders` files.
pub trait Authenticator: Send + Sync {
    /// Whether `client` is locked out after repeated failures.
    fn locked_out(&self, client: Option<IpAddr>) -> bool;
    /// Whether the password is the user's; a failure counts against the client.
    fn verify(&self, client: Option<IpAddr>, user: &str, password: &[u8]) -> bool;
    /// Whether the user may use this address (no brackets) as sender, in MAIL or `From:`.
    fn may_send_as(&self, user: &str, address: &str) -> bool;
}

/// The policy of one configuration: local users and trusted networks.
pub struct LocalPolicy {
    config: Config,
    users: LocalUsers,
}

impl LocalPolicy {
    /// Loads the mailboxes and aliases files the configuration names.
    pub fn load(config: &Config) -> Result<LocalPolicy, TableError> {
        Ok(LocalPolicy { config: config.clone(), users: LocalUsers::load(config)? })
    }

    /// The aliases file's unusable lines.
    pub fn problems(&self) -> &[crate::table::TableError] {
        self.users.problems()
    }
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
        if self.users.is_local_domain(mailbox.host()) {
            return match self.users.lookup_name(&mailbox.local_part_text()) {
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
        self.users.lookup_name(local).map(|user| format!("{user}@{domain}"))
    }

    fn expand(&self, name: &str) -> Option<Vec<String>> {
        let local = name.trim_start_matches('<').trim_end_matches('>');
        let local = local.split('@').next()?.to_lowercase();
        self.users.alias(&local).map(<[String]>::to_vec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::EnhancedStatus;

    #[test]
    fn every_refusal_has_its_code_and_an_agreeing_class() {
        use Refusal as R;
        let _exhaustive = |e: &Refusal| match e {
            R::UnknownUser(_) | R::RelayDenied(_) | R::TooManyRecipients | R::NoValidRecipients => (),
            R::NeedsSmtputf8 | R::MessageTooBig | R::NotOffered(_) => (),
        };
        for (refusal, want) in [
            (R::UnknownUser("bob".into()), "550 5.1.1"),
            (R::RelayDenied("<x@y.test>".into()), "554 5.7.1"),
            (R::TooManyRecipients, "452 4.5.3"),
            (R::NoValidRecipients, "554 5.5.1"),
            (R::NeedsSmtputf8, "553 5.6.7"),
            (R::MessageTooBig, "552 5.3.4"),
            (R::NotOffered("SIZE"), "555 5.5.4"),
        ] {
            let reply = Reply::from(&refusal);
            let EnhancedStatus(a, b, c) = reply.status().expect("an enhanced code");
            assert_eq!(format!("{} {a}.{b}.{c}", reply.code()), want, "{refusal:?}");
            assert!(reply.agrees() && reply.is_error(), "{refusal:?}");
        }
    }

    fn policy(extra: &str, mailboxes: Option<&[&str]>, aliases: &[(&str, &str)]) -> LocalPolicy {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("postern-policy-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = format!("local_domains = example.test, localhost\nrecipient_delimiter = +\n{extra}");
        if let Some(names) = mailboxes {
            let file = dir.join(format!("mailboxes-{}", names.len()));
            std::fs::write(&file, names.iter().map(|n| format!("{n}: /home/{n}/Maildir/\n")).collect::<String>())
                .unwrap();
            text += &format!("mailboxes = {}\n", file.display());
        }
        if !aliases.is_empty() {
            let file = dir.join("aliases");
            std::fs::write(&file, aliases.iter().map(|(n, v)| format!("{n}: {v}\n")).collect::<String>()).unwrap();
            text += &format!("aliases = {}\n", file.display());
        }
        LocalPolicy::load(&Config::parse(&text, "test").unwrap()).unwrap()
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
