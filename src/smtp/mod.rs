//! The SMTP wire language: bytes in, typed values out, no I/O.

pub mod address;
pub mod client;
pub mod command;
pub mod line;
pub mod reply;
pub mod sasl;
