//! Milters: filters such as rspamd, SpamAssassin's and OpenDKIM that judge and change mail
//! through the Sendmail milter protocol. `protocol` is the wire language and `edit`
//! the changes to a message, both without I/O; `client` is one connection, `chain` a
//! session's milters in order, `draft` the end of a message in a spool draft, and `local`
//! the milters of mail from postern-sendmail.

pub mod chain;
pub mod client;
pub mod draft;
pub mod edit;
pub mod local;
pub mod protocol;

/// A path as the milter protocol carries it, `<a@b>` or `a@b`: the text between the angle
/// brackets (what the `{mail_addr}` and `{rcpt_addr}` macros hold).
pub(crate) fn path_text(path: &str) -> &str {
    let path = path.trim();
    path.strip_prefix('<').and_then(|p| p.strip_suffix('>')).unwrap_or(path)
}
