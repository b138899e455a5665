//! Milters: filters such as rspamd, SpamAssassin's and OpenDKIM that judge and change mail
//! through the Sendmail milter protocol. `protocol` is the wire language, without I/O.

pub mod client;
pub mod protocol;
