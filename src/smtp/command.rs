//! SMTP commands (RFC 5321 §4.1): one command line in, one typed `Command` out.

use crate::smtp::address::{AddressError, ForwardPath, ReversePath, split_path};

/// Message body type declared with `BODY=` (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
}

/// The parameters of `MAIL FROM:` that postern offers (RFC 1870, RFC 6152, RFC 6531).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams {
    /// Declared size; a number too large for u64 is kept as `u64::MAX`, which no limit admits.
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
}

impl MailParams {
    /// True when any ESMTP parameter was given (they need EHLO).
    pub fn any(&self) -> bool {
        *self != MailParams::default()
    }

    /// The parameters as MAIL FROM writes them: `SIZE=n`, `BODY=8BITMIME`, `SMTPUTF8`.
    pub fn words(&self) -> Vec<String> {
        let mut words = Vec::new();
        if let Some(size) = self.size {
            words.push(format!("SIZE={size}"));
        }
        if self.body == BodyType::EightBitMime {
            words.push("BODY=8BITMIME".into());
        }
        if self.smtputf8 {
            words.push("SMTPUTF8".into());
        }
        words
    }
}

/// One parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy(String),
    Expn(String),
    Verb,
    StartTls,
    /// RFC 4954 §4 `AUTH mechanism [initial-response]`; the response as sent (base64 or `=`).
    Auth {
        mechanism: String,
        initial: Option<Vec<u8>>,
    },
}

impl Command {
    /// The line a client sends, CRLF included; `parse_command` reads it back as the same
    /// command (§4.1.1 for the verbs, RFC 1870, RFC 6152 and RFC 6531 §3.4 for MAIL's parameters).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = match self {
            Command::Helo(host) => format!("HELO {host}"),
            Command::Ehlo(host) => format!("EHLO {host}"),
            Command::Mail { from, params } => {
                let mut line = format!("MAIL FROM:{from}");
                for word in params.words() {
                    line += " ";
                    line += &word;
                }
                line
            }
            Command::Rcpt { to } => format!("RCPT TO:{to}"),
            Command::Data => "DATA".into(),
            Command::Rset => "RSET".into(),
            Command::Noop => "NOOP".into(),
            Command::Quit => "QUIT".into(),
            Command::Help => "HELP".into(),
            Command::Vrfy(what) => format!("VRFY {what}"),
            Command::Expn(what) => format!("EXPN {what}"),
            Command::Verb => "VERB".into(),
            Command::StartTls => "STARTTLS".into(),
            Command::Auth { mechanism, initial: None } => format!("AUTH {mechanism}"),
            Command::Auth { mechanism, initial: Some(r) } => format!("AUTH {mechanism} {}", String::from_utf8_lossy(r)),
        }
        .into_bytes();
        line.extend_from_slice(b"\r\n");
        line
    }
}

/// Why a command line was refused before it reached the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyntaxError {
    Unrecognized,
    LineTooLong,
    /// Wrong arguments; the text is the usage.
    Usage(&'static str),
    /// Known to SMTP, deliberately not offered (§4.2.4: 502).
    NotImplemented(&'static str),
    Sender(AddressError),
    Recipient(AddressError),
    BadParameter,
    DuplicateParameter,
    UnknownParameter(String),
}

/// Parses one command line, its CRLF already removed.
pub fn parse_command(line: &[u8]) -> Result<Command, SyntaxError> {
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    let upper = verb.to_ascii_uppercase();
    match upper.as_slice() {
        b"HELO" => helo_name(args, "HELO domain").map(Command::Helo),
        b"EHLO" => helo_name(args, "EHLO domain").map(Command::Ehlo),
        b"MAIL" => parse_mail(args),
        b"RCPT" => parse_rcpt(args),
        b"DATA" => no_args(args, Command::Data, "DATA"),
        b"RSET" => no_args(args, Command::Rset, "RSET"),
        b"NOOP" => Ok(Command::Noop), // §4.1.1.9: an argument SHOULD be ignored
        b"QUIT" => Ok(Command::Quit),
        b"HELP" => Ok(Command::Help),
        b"VRFY" => text_arg(args, "VRFY address").map(Command::Vrfy),
        b"EXPN" => text_arg(args, "EXPN list").map(Command::Expn),
        b"VERB" => Ok(Command::Verb),
        b"STARTTLS" => no_args(args, Command::StartTls, "STARTTLS"),
        b"AUTH" => parse_auth(args),
        b"TURN" | b"ETRN" | b"ATRN" | b"BDAT" | b"SEND" | b"SOML" | b"SAML" => {
            Err(SyntaxError::NotImplemented(not_implemented_name(&upper)))
        }
        _ => Err(SyntaxError::Unrecognized),
    }
}

fn not_implemented_name(verb: &[u8]) -> &'static str {
    match verb {
        b"TURN" => "TURN",
        b"ETRN" => "ETRN",
        b"ATRN" => "ATRN",
        b"BDAT" => "BDAT",
        _ => "command",
    }
}

/// RFC 4954 §4: `AUTH SP sasl-mech [SP initial-response]`; a mechanism name is 1 to 20
/// of `A-Z 0-9 - _`, and the response is base64 or `=`.
fn parse_auth(args: &[u8]) -> Result<Command, SyntaxError> {
    const USAGE: &str = "AUTH mechanism [initial-response]";
    let mut words = args.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(SyntaxError::Usage(USAGE))?;
    let initial = words.next();
    if words.next().is_some()
        || mechanism.len() > 20
        || !mechanism.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || initial.is_some_and(|r| !r.iter().all(|&b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)))
    {
        return Err(SyntaxError::Usage(USAGE));
    }
    let mechanism = String::from_utf8_lossy(mechanism).to_ascii_uppercase();
    Ok(Command::Auth { mechanism, initial: initial.map(<[u8]>::to_vec) })
}

fn no_args(args: &[u8], cmd: Command, usage: &'static str) -> Result<Command, SyntaxError> {
    if args.iter().all(|&b| b == b' ') { Ok(cmd) } else { Err(SyntaxError::Usage(usage)) }
}

/// §4.1.1.1: the first word is the client's name; trailing text is tolerated.
/// Only printable ASCII is kept, so the Received header never holds control bytes.
fn helo_name(args: &[u8], usage: &'static str) -> Result<String, SyntaxError> {
    let word = args.split(|&b| b == b' ').find(|w| !w.is_empty()).ok_or(SyntaxError::Usage(usage))?;
    if word.iter().all(|b| b.is_ascii_graphic()) {
        Ok(String::from_utf8_lossy(word).into_owned())
    } else {
        Err(SyntaxError::Usage(usage))
    }
}

fn text_arg(args: &[u8], usage: &'static str) -> Result<String, SyntaxError> {
    let text = std::str::from_utf8(args).map_err(|_| SyntaxError::Usage(usage))?.trim();
    if text.is_empty() || text.chars().any(char::is_control) {
        return Err(SyntaxError::Usage(usage));
    }
    Ok(text.to_string())
}

/// Strips a case-insensitive keyword such as `FROM:`, allowing spaces after it as many clients send.
fn strip_keyword<'a>(args: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| &args[keyword.len()..])
}

/// §4.1.1.2 `MAIL FROM:<reverse-path> [SP mail-parameters]`.
fn parse_mail(args: &[u8]) -> Result<Command, SyntaxError> {
    const USAGE: &str = "MAIL FROM:<address>";
    let rest = strip_keyword(args, b"FROM:").ok_or(SyntaxError::Usage(USAGE))?;
    let (inner, params) = split_path(rest).map_err(|e| match e {
        AddressError::MissingBrackets => SyntaxError::Usage(USAGE),
        e => SyntaxError::Sender(e),
    })?;
    let params = parse_mail_params(params)?;
    let from = ReversePath::parse(inner).map_err(SyntaxError::Sender)?;
    Ok(Command::Mail { from, params })
}

/// §4.1.1.3 `RCPT TO:<forward-path> [SP rcpt-parameters]`; no RCPT parameter is offered.
fn parse_rcpt(args: &[u8]) -> Result<Command, SyntaxError> {
    const USAGE: &str = "RCPT TO:<address>";
    let rest = strip_keyword(args, b"TO:").ok_or(SyntaxError::Usage(USAGE))?;
    let (inner, params) = split_path(rest).map_err(|e| match e {
        AddressError::MissingBrackets => SyntaxError::Usage(USAGE),
        e => SyntaxError::Recipient(e),
    })?;
    if let Some((name, _)) = parameters(params)?.next() {
        return Err(SyntaxError::UnknownParameter(name));
    }
    let to = ForwardPath::parse(inner).map_err(SyntaxError::Recipient)?;
    Ok(Command::Rcpt { to })
}

/// §4.1.2 `esmtp-param = esmtp-keyword ["=" esmtp-value]`, separated by spaces.
/// The text after the path must be empty or start with a space.
fn parameters(text: &[u8]) -> Result<impl Iterator<Item = (String, Option<&[u8]>)>, SyntaxError> {
    if !text.is_empty() && text[0] != b' ' {
        return Err(SyntaxError::BadParameter);
    }
    let mut out = Vec::new();
    for word in text.split(|&b| b == b' ').filter(|w| !w.is_empty()) {
        let (key, value) = match word.iter().position(|&b| b == b'=') {
            Some(i) => (&word[..i], Some(&word[i + 1..])),
            None => (word, None),
        };
        let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
            && key.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        // esmtp-value = 1*(%d33-60 / %d62-126)
        let value_ok = value.is_none_or(|v| !v.is_empty() && v.iter().all(|&b| (33..=126).contains(&b) && b != b'='));
        if !key_ok || !value_ok {
            return Err(SyntaxError::BadParameter);
        }
        out.push((String::from_utf8_lossy(key).to_ascii_uppercase(), value));
    }
    Ok(out.into_iter())
}

fn parse_mail_params(text: &[u8]) -> Result<MailParams, SyntaxError> {
    let mut params = MailParams::default();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in parameters(text)? {
        if seen.contains(&name) {
            return Err(SyntaxError::DuplicateParameter);
        }
        match (name.as_str(), value) {
            ("SIZE", Some(v)) => params.size = Some(parse_size(v)?),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case(b"7BIT") => params.body = BodyType::SevenBit,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case(b"8BITMIME") => params.body = BodyType::EightBitMime,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case(b"BINARYMIME") => {
                return Err(SyntaxError::UnknownParameter("BODY=BINARYMIME".into()));
            }
            ("SMTPUTF8", None) => params.smtputf8 = true,
            // RFC 4954 §5: the server may ignore the identity it is given; it is checked
            // to be xtext (RFC 3461 §4) and then dropped, never stored.
            ("AUTH", Some(v)) if is_xtext(v) => {}
            ("SIZE" | "BODY" | "SMTPUTF8" | "AUTH", _) => return Err(SyntaxError::BadParameter),
            _ => return Err(SyntaxError::UnknownParameter(name)),
        }
        seen.push(name);
    }
    Ok(params)
}

/// RFC 3461 §4 xtext: printable ASCII but `+` and `=`, with `+XX` for any other byte.
fn is_xtext(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => {
                let hex = v.get(i + 1..i + 3).unwrap_or(b"");
                if hex.len() != 2 || !hex.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)) {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if v[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    true
}

/// RFC 1870 `size-value = 1*20DIGIT`; anything larger than u64 becomes u64::MAX.
fn parse_size(value: &[u8]) -> Result<u64, SyntaxError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(SyntaxError::BadParameter);
    }
    let digits = std::str::from_utf8(value).map_err(|_| SyntaxError::BadParameter)?;
    Ok(digits.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_commands_parse_back_the_same() {
        let mailbox = |t: &str| ForwardPath::parse(t.as_bytes()).unwrap();
        let from = |t: &str| ReversePath::parse(t.as_bytes()).unwrap();
        let all = MailParams { size: Some(12345), body: BodyType::EightBitMime, smtputf8: true };
        let commands = [
            Command::Helo("client.test".into()),
            Command::Ehlo("[192.0.2.1]".into()),
            Command::Mail { from: from(""), params: MailParams::default() },
            Command::Mail { from: from("\"a b\"@x.test"), params: all },
            Command::Mail { from: from("j\u{f6}rg@b\u{fc}cher.test"), params: MailParams { smtputf8: true, ..all } },
            Command::Rcpt { to: mailbox("postmaster") },
            Command::Rcpt { to: mailbox("bob@[IPv6:::1]") },
            Command::Data,
            Command::Rset,
            Command::Noop,
            Command::Quit,
            Command::Help,
            Command::Vrfy("bob".into()),
            Command::Expn("staff".into()),
            Command::Verb,
            Command::StartTls,
            Command::Auth { mechanism: "PLAIN".into(), initial: None },
            Command::Auth { mechanism: "LOGIN".into(), initial: Some(b"YWxpY2U=".to_vec()) },
        ];
        for command in commands {
            let line = command.to_line();
            assert!(line.ends_with(b"\r\n") && line.len() <= 512, "{line:?}");
            assert_eq!(parse_command(&line[..line.len() - 2]), Ok(command));
        }
    }

    fn mail(line: &str) -> Result<Command, SyntaxError> {
        parse_command(line.as_bytes())
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(mail("noop"), Ok(Command::Noop));
        assert_eq!(mail("NoOp anything"), Ok(Command::Noop));
        assert_eq!(mail("QUIT"), Ok(Command::Quit));
        assert_eq!(mail("ehlo client.test"), Ok(Command::Ehlo("client.test".into())));
    }

    #[test]
    fn empty_and_short_lines_are_unrecognized() {
        for line in ["", " ", "M", "MAI\u{e9} FROM:<a@b.test>", "FOO"] {
            assert_eq!(mail(line), Err(SyntaxError::Unrecognized), "{line:?}");
        }
        assert_eq!(mail("MAIL"), Err(SyntaxError::Usage("MAIL FROM:<address>")));
        assert_eq!(mail("RCPT"), Err(SyntaxError::Usage("RCPT TO:<address>")));
    }

    #[test]
    fn helo_needs_a_printable_name() {
        assert_eq!(mail("EHLO"), Err(SyntaxError::Usage("EHLO domain")));
        assert_eq!(mail("EHLO [192.0.2.1] extra words"), Ok(Command::Ehlo("[192.0.2.1]".into())));
        assert!(parse_command(b"EHLO a\x01b").is_err());
    }

    #[test]
    fn mail_parameters() {
        let Ok(Command::Mail { params, .. }) = mail("MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME SMTPUTF8") else {
            panic!()
        };
        assert_eq!(params, MailParams { size: Some(100), body: BodyType::EightBitMime, smtputf8: true });
        let Ok(Command::Mail { params, .. }) = mail("MAIL FROM:<a@b.test> SIZE=99999999999999999999999") else {
            panic!()
        };
        assert_eq!(params.size, Some(u64::MAX));
    }

    #[test]
    fn malformed_parameters_are_refused() {
        for bad in ["=", "SIZE=", "=\"", "BODY=", "SIZE=1x", "SMTPUTF8=yes", "BODY=9BIT"] {
            assert_eq!(mail(&format!("MAIL FROM:<a@b.test> {bad}")), Err(SyntaxError::BadParameter), "{bad}");
        }
        assert_eq!(mail("MAIL FROM:<a@b.test>SIZE=1"), Err(SyntaxError::BadParameter));
        assert_eq!(mail("MAIL FROM:<a@b.test> SIZE=1 SIZE=2"), Err(SyntaxError::DuplicateParameter));
        assert_eq!(mail("MAIL FROM:<a@b.test> FOO=1"), Err(SyntaxError::UnknownParameter("FOO".into())));
        assert_eq!(
            mail("MAIL FROM:<a@b.test> BODY=BINARYMIME"),
            Err(SyntaxError::UnknownParameter("BODY=BINARYMIME".into()))
        );
        assert_eq!(mail("RCPT TO:<a@b.test> NOTIFY=NEVER"), Err(SyntaxError::UnknownParameter("NOTIFY".into())));
    }

    #[test]
    fn paths_need_brackets_and_stand_alone() {
        assert_eq!(mail("RCPT TO:relaytest@remote.test"), Err(SyntaxError::Usage("RCPT TO:<address>")));
        assert_eq!(mail("RCPT TO: <a@b.test>"), Ok(Command::Rcpt { to: ForwardPath::parse(b"a@b.test").unwrap() }));
        assert_eq!(mail("RCPT TO:<alice@example.test>,<relaytest@remote.test>"), Err(SyntaxError::BadParameter));
        assert!(matches!(mail("MAIL FROM:<;sleep 66;>"), Err(SyntaxError::Sender(_))));
        assert_eq!(mail("MAIL FROM:<>"), Ok(Command::Mail { from: ReversePath::Null, params: MailParams::default() }));
    }

    #[test]
    fn argument_rules_for_data_rset_starttls() {
        assert_eq!(mail("DATA x"), Err(SyntaxError::Usage("DATA")));
        assert_eq!(mail("RSET x"), Err(SyntaxError::Usage("RSET")));
        assert_eq!(mail("STARTTLS foo"), Err(SyntaxError::Usage("STARTTLS")));
        assert_eq!(mail("BDAT 18446744073709551616"), Err(SyntaxError::NotImplemented("BDAT")));
        assert_eq!(mail("VRFY"), Err(SyntaxError::Usage("VRFY address")));
    }

    #[test]
    fn auth_commands() {
        let auth = |m: &str, r: Option<&str>| Ok(Command::Auth { mechanism: m.into(), initial: r.map(|r| r.into()) });
        assert_eq!(mail("auth plain"), auth("PLAIN", None));
        assert_eq!(mail("AUTH PLAIN AGFsaWNlAHB3"), auth("PLAIN", Some("AGFsaWNlAHB3")));
        assert_eq!(mail("AUTH PLAIN ="), auth("PLAIN", Some("=")));
        assert_eq!(mail("AUTH CRAM-MD5"), auth("CRAM-MD5", None));
        for bad in ["AUTH", "AUTH PLAIN a b", "AUTH PL\u{e9}IN", "AUTH PLAIN !!!!", "AUTH AAAAAAAAAAAAAAAAAAAAAAAAA"] {
            assert_eq!(mail(bad), Err(SyntaxError::Usage("AUTH mechanism [initial-response]")), "{bad}");
        }
        assert!(matches!(mail("MAIL FROM:<a@b.test> AUTH=<>"), Ok(Command::Mail { .. })));
        assert!(matches!(mail("MAIL FROM:<a@b.test> AUTH=alice+40example.test"), Ok(Command::Mail { .. })));
        for bad in ["AUTH=x+0", "AUTH", "AUTH=a+0a", "AUTH=a=b"] {
            assert_eq!(mail(&format!("MAIL FROM:<a@b.test> {bad}")), Err(SyntaxError::BadParameter), "{bad}");
        }
    }
}
