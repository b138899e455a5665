//! postern: a small mail transfer agent.
//!
//! Mail flows `server` (SMTP in) -> `spool` (one file per message) -> delivery.
//!
//! - `smtp`: the SMTP wire language, bytes in and typed values out, no I/O
//! - `session`: the SMTP server state machine, no I/O
//! - `policy`: the questions the session asks (local? exists? may relay?)
//! - `server`: listeners, threads, deadlines, DATA into the spool (`conn`, `handoff` inside)
//! - `spool`: queue files and the commit that makes them durable
//! - `config`: postern.conf into a checked `Config`
//! - `table`: aliases-style `name: value` files
//! - `trace`: the `Received:` header and dates
//! - `logging`: stderr or syslog output
//! - `sys`: the few system calls std lacks
#![deny(unsafe_code)]

pub mod config;
pub mod logging;
pub mod policy;
pub mod server;
pub mod session;
pub mod smtp;
pub mod spool;
pub mod sys;
pub mod table;
pub mod trace;
