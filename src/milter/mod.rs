//! Milters: filters such as rspamd, SpamAssassin's and OpenDKIM that judge and change mail
//! through the Sendmail milter protocol. `protocol` is the wire language and `edit`
//! the changes to a message, both without I/O; `client` is one connection, `chain` a
//! session's milters in order.

pub mod chain;
pub mod client;
pub mod edit;
pub mod protocol;
