//! postern: a small mail transfer agent.
//!
//! Mail flows `server` (SMTP in) -> `spool` (one file per message) -> `deliver` (maildirs,
//! other servers, bounces). A module uses only those below it; `smtp` uses nothing else.
//!
//! - `smtp`: the SMTP wire language, bytes in and typed values out, no I/O; the client's
//!   state machines too (`smtp::client`)
//! - `session`: the SMTP server state machine, no I/O
//! - `policy`: the checks the session makes, in one place: client, sender (our own domains,
//!   SPF), recipient (local? exists? may relay?), end of data; the fields they add
//! - `spf`: SPF's `check_host()` over `dns::Resolve` (pure: tests feed the answers)
//! - `auth`: the `auth_users` and `auth_senders` files, password hashes, the login lockout
//! - `dovecot`: logins checked by Dovecot (its authentication protocol's client side)
//! - `server`: listeners, threads, deadlines, DATA into the spool (`conn`, `handoff`,
//!   `tls_files` inside)
//! - `spool`: queue files and the commit that makes them durable; `maildrop/` for local users
//! - `submit`: a message handed over on stdin turned into an envelope and a message (pure)
//! - `deliver`: one delivery run: lock, expand, deliver, log, bounce
//! - `queue`: the queue as the operator reads it: `postern-queue list`, `mailq` (pure shapes)
//! - `showq`: the queue listing a running server gives local users who cannot read the spool
//! - `schedule`: what is due when, from the delivery log (pure)
//! - `launch`: instant delivery's starter: one `postern-deliver --instant` at a time, per spool
//! - `instant`: that process: new mail delivered as it is committed, until idle
//! - `relay`: remote routes, sessions kept per server, each transaction executed then recorded
//! - `client`: the SMTP client's TCP and TLS loop around `smtp::client`
//! - `dane`: DANE for SMTP (RFC 7672): the TLSA question and answer, chains matched (pure)
//! - `mtasts`: MTA-STS policies (RFC 8461): their parsers (pure), fetch and cache
//! - `dns`: MX lookup and the hosts for a domain; the `Resolve` trait the checks ask through
//! - `outcome`: what any delivery error means (sent, deferred, bounced, status), in one place
//! - `alias`: local users, aliases and where each mailbox is
//! - `srs`: the sender of a forwarded copy rewritten, and bounces to it turned back (pure)
//! - `local`: copies written as the system user they are for (a root helper, a writer per copy)
//! - `maildir`: writing one message into a maildir
//! - `message`: the header section of a message: fields, Message-ID, address lists (pure)
//! - `dsn`: RFC 3464 reports (pure)
//! - `dkim`: DKIM signatures for our users' mail as it leaves, and new keys
//! - `config`: postern.conf into a checked `Config`
//! - `check`: `--check`, what would fail at start or at run time
//! - `cli`: `--help`, `--version` and bad arguments, the same in every program
//! - `table`: aliases-style `name: value` files
//! - `milter`: the milter protocol (rspamd, SpamAssassin, OpenDKIM as filters)
//! - `trace`: the `Received:` header and dates
//! - `logging`: stderr or syslog output
//! - `flush`: group commit, one fsync shared by the callers that need it at one moment
//! - `sys`: the few system calls std lacks
//! - `fault`: crash points that only fault-injection test builds honour
//!
//! The queue's states, each transition and what a crash leaves are in `doc/queue.md`.
#![deny(unsafe_code)]

pub mod alias;
pub mod auth;
pub mod check;
pub mod cli;
pub mod client;
pub mod config;
pub mod dane;
pub mod deliver;
pub mod dkim;
pub mod dmarc;
pub mod dns;
pub mod dovecot;
pub mod dsn;
pub mod fault;
pub mod flush;
pub mod instant;
pub mod launch;
pub mod local;
pub mod logging;
pub mod maildir;
pub mod message;
pub mod milter;
pub mod mtasts;
pub mod outcome;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod schedule;
pub mod server;
pub mod session;
pub mod showq;
pub mod smtp;
pub mod spf;
pub mod spool;
pub mod srs;
pub mod submit;
pub mod sys;
pub mod table;
pub mod trace;
