//! SMTP AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, server side: the
//! base64 of the exchange, the mechanisms' messages, and the steps of one exchange. No I/O,
//! and no idea of who the users are: the exchange yields a user name and a password.

/// RFC 4954 §4: a client's response line may be up to 12288 octets.
pub const MAX_RESPONSE_LINE: usize = 12288;

/// The mechanisms offered, in the order EHLO lists them.
pub const MECHANISMS: &str = "PLAIN LOGIN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// RFC 4954 §4: mechanism names are case-insensitive.
    pub fn parse(name: &str) -> Option<Mechanism> {
        match name.to_ascii_uppercase().as_str() {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// Strict base64 (RFC 4648 §4): whole quads, padding only at the end, no other bytes.
/// `None` for anything else (RFC 4954 §4: the server rejects it with 501).
pub fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    fn value(b: u8) -> Option<u32> {
        match b {
            b'A'..=b'Z' => Some(u32::from(b - b'A')),
            b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.len() / 4;
    for (i, quad) in text.chunks_exact(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&b| b == b'=').count();
        if pad > 2 || (pad > 0 && i + 1 != quads) {
            return None;
        }
        let mut n = 0u32;
        for &b in &quad[..4 - pad] {
            n = n << 6 | value(b)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// A user name and a password, as a mechanism delivered them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <password>)", self.user) // never a password in a log
    }
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`. An authorization identity other than
/// the user's own would be acting for someone else, which is not offered: refused.
pub fn parse_plain(message: &[u8]) -> Option<Credentials> {
    let mut parts = message.split(|&b| b == 0);
    let (authzid, authcid, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || authcid.is_empty() || password.is_empty() {
        return None;
    }
    if !authzid.is_empty() && authzid != authcid {
        return None;
    }
    Some(Credentials { user: user_name(authcid)?, password: password.to_vec() })
}

/// A user name is UTF-8 without control characters, at most 255 bytes.
fn user_name(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    (!text.is_empty() && text.len() <= 255 && !text.chars().any(char::is_control)).then(|| text.to_string())
}

/// What the server says next in an exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// `334` with this challenge (already base64).
    Challenge(&'static str),
    /// The exchange is complete: check these.
    Verify(Credentials),
    /// `*`: the client gave up (`501 5.7.0`).
    Cancelled,
    /// Not base64 (`501 5.5.2`).
    Undecodable,
    /// Decoded, but not a valid message for the mechanism (`535 5.7.8`, as a failed login).
    Malformed,
}

/// One exchange in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    mechanism: Mechanism,
    /// LOGIN: the user name, once given.
    user: Option<String>,
}

/// base64("Username:") and base64("Password:"), the challenges LOGIN clients expect.
const LOGIN_USER: &str = "VXNlcm5hbWU6";
const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

impl Exchange {
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4); `=` is an empty initial response.
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>) -> (Exchange, Next) {
        let mut exchange = Exchange { mechanism, user: None };
        let next = match initial {
            None => match mechanism {
                Mechanism::Plain => Next::Challenge(""),
                Mechanism::Login => Next::Challenge(LOGIN_USER),
            },
            Some(b"=") => exchange.take(Vec::new()),
            Some(text) => match decode_base64(text) {
                Some(bytes) => exchange.take(bytes),
                None => Next::Undecodable,
            },
        };
        (exchange, next)
    }

    /// The client's response line to the last challenge.
    pub fn respond(&mut self, line: &[u8]) -> Next {
        if line == b"*" {
            return Next::Cancelled;
        }
        match decode_base64(line) {
            Some(bytes) => self.take(bytes),
            None => Next::Undecodable,
        }
    }

    fn take(&mut self, bytes: Vec<u8>) -> Next {
        match (self.mechanism, self.user.take()) {
            (Mechanism::Plain, _) => parse_plain(&bytes).map_or(Next::Malformed, Next::Verify),
            (Mechanism::Login, None) => match user_name(&bytes) {
                Some(user) => {
                    self.user = Some(user);
                    Next::Challenge(LOGIN_PASSWORD)
                }
                None => Next::Malformed,
            },
            (Mechanism::Login, Some(_)) if bytes.is_empty() => Next::Malformed,
            (Mechanism::Login, Some(user)) => Next::Verify(Credentials { user, password: bytes }),
        }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::client::base64;

    #[test]
    fn base64_decodes_what_the_encoder_wrote() {
        for text in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", b"\0alice\0s3cret", &[255, 0, 128]] {
            assert_eq!(decode_base64(base64(text).as_bytes()).as_deref(), Some(text), "{text:?}");
        }
    }

    #[test]
    fn base64_is_strict() {
        // RFC 4954 §4 and the decoder bounds that broke other servers: none of these decode.
        for bad in ["=", "A", "AA", "AAA", "====", "!!!!", "AA=A", "A===", "Zm9v\r\n", "Zm==Zm9v", " Zm9v", "Zm9v="] {
            assert_eq!(decode_base64(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(decode_base64("A".repeat(20_000).as_bytes()).map(|v| v.len()), Some(15_000));
    }

    #[test]
    fn plain_messages() {
        let ok = |u: &str| Some(Credentials { user: u.into(), password: b"pw".to_vec() });
        assert_eq!(parse_plain(b"\0alice\0pw"), ok("alice"));
        assert_eq!(parse_plain(b"alice\0alice\0pw"), ok("alice"));
        assert_eq!(parse_plain(b"\0alice@example.test\0pw"), ok("alice@example.test"));
        for bad in
            [&b"bob\0alice\0pw"[..], b"\0\0pw", b"\0alice\0", b"alice", b"\0alice\0pw\0x", b"\0al\x01ce\0pw", b""]
        {
            assert_eq!(parse_plain(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn plain_with_and_without_an_initial_response() {
        let token = base64(b"\0alice\0pw");
        let (_, next) = Exchange::start(Mechanism::Plain, Some(token.as_bytes()));
        assert!(matches!(next, Next::Verify(c) if c.user == "alice"));
        let (mut x, next) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(next, Next::Challenge(""));
        assert!(matches!(x.respond(token.as_bytes()), Next::Verify(c) if c.password == b"pw"));
        let (mut x, _) = Exchange::start(Mechanism::Plain, None);
        assert_eq!(x.respond(b"*"), Next::Cancelled);
        assert_eq!(x.respond(b"not base64"), Next::Undecodable);
        assert_eq!(Exchange::start(Mechanism::Plain, Some(b"=")).1, Next::Malformed);
    }

    #[test]
    fn login_asks_for_the_name_then_the_password() {
        let (mut x, next) = Exchange::start(Mechanism::Login, None);
        assert_eq!(next, Next::Challenge("VXNlcm5hbWU6"));
        assert_eq!(x.respond(base64(b"alice").as_bytes()), Next::Challenge("UGFzc3dvcmQ6"));
        let Next::Verify(c) = x.respond(base64(b"pw").as_bytes()) else { panic!() };
        assert_eq!((c.user.as_str(), c.password.as_slice()), ("alice", &b"pw"[..]));
        let (mut x, next) = Exchange::start(Mechanism::Login, Some(base64(b"alice").as_bytes()));
        assert_eq!(next, Next::Challenge("UGFzc3dvcmQ6"));
        assert_eq!(x.respond(b"="), Next::Undecodable);
        assert!(format!("{c:?}").contains("<password>") && !format!("{c:?}").contains("pw\""));
    }
}
