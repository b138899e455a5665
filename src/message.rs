//! The header section of a message (RFC 5322 §2.2, §3.6), as pure functions over bytes:
//! collect it from a stream, find a field, read the addresses of To/Cc/Bcc.

/// The largest header section postern reads: the server checks a submitted message's whole
/// header section within it (the `From:` fields, the `Date:` and `Message-ID:` it lacks) and
/// refuses one that is larger, and delivery signs no header section larger than it plus the
/// trace fields the server adds, so both always read the same fields.
pub const MAX_HEADER_SECTION: usize = 64 * 1024;

/// Collects the header section from a stream of message octets, up to `cap` octets.
pub struct HeaderScan {
    head: Vec<u8>,
    cap: usize,
    done: bool,
}

impl HeaderScan {
    pub fn new(cap: usize) -> HeaderScan {
        HeaderScan { head: Vec::new(), cap, done: false }
    }

    /// Takes the next octets of the message; stops at the blank line or at the cap. Returns
    /// how many of them it took: the rest are the body's (or past the cap).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.done {
            return 0;
        }
        let room = self.cap.saturating_sub(self.head.len());
        let take = &bytes[..bytes.len().min(room)];
        let before = self.head.len();
        self.head.extend_from_slice(take);
        // Look for the end only where it can be: from three octets before the new ones.
        if let Some(end) = header_end(&self.head, before.saturating_sub(3)) {
            self.head.truncate(end);
            self.done = true;
        } else if self.head.len() >= self.cap {
            self.done = true;
        }
        self.head.len().saturating_sub(before)
    }

    /// The header section as collected, with its empty line once it is complete.
    pub fn bytes(&self) -> &[u8] {
        &self.head
    }

    pub fn headers(&self) -> Headers<'_> {
        Headers::parse(&self.head).0
    }

    /// The whole header section has been seen (or as much of it as the cap allows).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The cap was reached before the header section ended: its fields were not all seen.
    pub fn overflowed(&self) -> bool {
        self.done && self.head.len() >= self.cap && header_end(&self.head, 0).is_none()
    }
}

/// The `Date:` and `Message-ID:` fields a message lacks (RFC 5322 §3.6: `Date:` is required,
/// `Message-ID:` should be there), as the submission server adds them (RFC 6409 §8.2, §8.3).
pub fn missing_fields(headers: &Headers<'_>, time: u64, id: &str, hostname: &str) -> String {
    let mut out = String::new();
    if !headers.has("Date") {
        out += &format!("Date: {}\r\n", crate::trace::rfc5322_date(time));
    }
    if !headers.has("Message-ID") {
        out += &format!("Message-ID: <{id}@{hostname}>\r\n");
    }
    out
}

/// Where the header section ends (after its blank line), searching from `from`: a caller
/// that feeds octets in pieces searches only from three octets before the new ones.
pub fn header_end(bytes: &[u8], from: usize) -> Option<usize> {
    if bytes.starts_with(b"\r\n") {
        return Some(2);
    }
    if bytes.starts_with(b"\n") {
        return Some(1);
    }
    let mut i = from.max(1);
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// One header field: its name and its value as written (folding kept, no line end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a str,
    pub raw: &'a [u8],
}

impl Field<'_> {
    /// The value unfolded (RFC 5322 §2.2.3) and trimmed, with invalid UTF-8 replaced.
    pub fn value(&self) -> String {
        let text = String::from_utf8_lossy(self.raw);
        let unfolded: String = text.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        unfolded.trim().to_string()
    }
}

/// The fields of a header section, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers<'a> {
    pub fields: Vec<Field<'a>>,
}

impl<'a> Headers<'a> {
    /// Reads the header section at the start of `message` (CRLF or LF line ends); returns the
    /// fields and where the body starts. A line that is not a field (no colon, or a name with
    /// other than printable ASCII) ends the section there, as if the body began with it.
    pub fn parse(message: &'a [u8]) -> (Headers<'a>, usize) {
        let mut fields: Vec<Field<'a>> = Vec::new();
        // Where each field's value starts, so a continuation line can extend it.
        let mut starts: Vec<usize> = Vec::new();
        let mut pos = 0;
        while pos < message.len() {
            let line_end = message[pos..].iter().position(|&b| b == b'\n').map_or(message.len(), |i| pos + i + 1);
            let line = &message[pos..line_end];
            let content = strip_line_end(line);
            if content.is_empty() {
                return (Headers { fields }, line_end); // the blank line
            }
            if matches!(content[0], b' ' | b'\t') {
                // A continuation line (§2.2.3): part of the field before it.
                match (fields.last_mut(), starts.last()) {
                    (Some(last), Some(&start)) => last.raw = &message[start..pos + content.len()],
                    _ => return (Headers { fields }, pos),
                }
                pos = line_end;
                continue;
            }
            let Some(colon) = content.iter().position(|&b| b == b':') else {
                return (Headers { fields }, pos);
            };
            let name = &content[..colon];
            // §3.6.8: field names are printable ASCII other than the colon, no spaces.
            let name_ok = !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b));
            let Some(name) = std::str::from_utf8(name).ok().filter(|_| name_ok) else {
                return (Headers { fields }, pos);
            };
            fields.push(Field { name, raw: &content[colon + 1..] });
            starts.push(pos + colon + 1);
            pos = line_end;
        }
        (Headers { fields }, message.len())
    }

    /// The first field of that name (names compare without regard to case).
    pub fn get(&self, name: &str) -> Option<String> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name)).map(Field::value)
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Every address in every field of that name (for `sendmail -t`).
    pub fn addresses(&self, name: &str) -> Vec<String> {
        self.fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name)).flat_map(|f| addresses(&f.value())).collect()
    }
}

fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The message identifier of a `Message-ID:` value: the first `<...>`, for the log.
pub fn message_id(value: &str) -> Option<String> {
    let start = value.find('<')?;
    let end = start + value[start..].find('>')?;
    let id = &value[start..=end];
    // Printable ASCII only: it goes into a log line.
    id.bytes().all(|b| (33..=126).contains(&b)).then(|| id.to_string())
}

/// The domain of an address from `addresses`, in lower case ("" after a bare `@`); `None`
/// without an `@`.
pub fn domain_of(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    Some(domain.trim_end_matches('>').to_lowercase())
}

/// The addr-specs of an address list (RFC 5322 §3.4): `a@b`, `Name <a@b>`, `"Q, N" <a@b>`,
/// `a@b (comment)`, groups `team: a@b, c@d;`. A bare name (`root`) is kept as written.
pub fn addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut angle: Option<String> = None;
    let (mut in_quote, mut in_angle, mut comment) = (false, false, 0usize);
    let mut chars = value.chars();
    let mut finish = |current: &mut String, angle: &mut Option<String>| {
        let addr = angle.take().unwrap_or_else(|| current.trim().to_string());
        let addr = addr.trim().to_string();
        if !addr.is_empty() {
            out.push(addr);
        }
        current.clear();
    };
    while let Some(c) = chars.next() {
        if comment > 0 {
            match c {
                '\\' => {
                    chars.next();
                }
                '(' => comment += 1,
                ')' => comment -= 1,
                _ => {}
            }
            continue;
        }
        if in_quote {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_quote = false,
                _ => {}
            }
            continue; // a display name is never an address
        }
        if in_angle {
            match c {
                '>' => in_angle = false,
                c => angle.get_or_insert_with(String::new).push(c),
            }
            continue;
        }
        match c {
            '"' => in_quote = true,
            '(' => comment = 1,
            '<' => {
                in_angle = true;
                angle = Some(String::new());
            }
            ':' => current.clear(), // a group's name
            ',' | ';' => finish(&mut current, &mut angle),
            c => current.push(c),
        }
    }
    finish(&mut current, &mut angle);
    // A route (`<@a,@b:c@d>`, RFC 5322 §4.4 obsolete) keeps only its mailbox.
    out.into_iter()
        .map(|a| match a.rsplit_once(':') {
            Some((route, mailbox)) if route.starts_with('@') => mailbox.to_string(),
            _ => a,
        })
        .filter(|a| !a.is_empty() && !a.contains(char::is_whitespace))
        .collect()
}

/// Removes from a stream of message octets the header fields of one name that a test
/// rejects (`Authentication-Results:` fields bearing our name, RFC 8601 §5); everything else
/// passes unchanged, the body at once. Other fields are never held; a field of that name is
/// held until it ends, at most `FIELD_CAP` octets, and judged on what was held.
pub struct FieldFilter<F: Fn(&[u8]) -> bool> {
    /// The field name, lower case, without the colon.
    name: &'static str,
    /// Whether a field's value (what follows the colon) goes.
    remove: F,
    mode: Mode,
    held: Vec<u8>,
    at_line_start: bool,
    /// The empty line that ends the header section has begun.
    ending: bool,
    done: bool,
    removed: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Passed on as it comes.
    Pass,
    /// A field's first octets, until its name is known.
    Name,
    /// A field of the name, held until it ends.
    Held,
    /// A field of the name judged on its first `FIELD_CAP` octets: dropped to its end.
    Drop,
}

/// The most of one such field held to judge it.
pub const FIELD_CAP: usize = 8 * 1024;

impl<F: Fn(&[u8]) -> bool> FieldFilter<F> {
    pub fn new(name: &'static str, remove: F) -> FieldFilter<F> {
        FieldFilter {
            name,
            remove,
            mode: Mode::Pass,
            held: Vec::new(),
            at_line_start: true,
            ending: false,
            done: false,
            removed: 0,
        }
    }

    /// How many fields were removed.
    pub fn removed(&self) -> usize {
        self.removed
    }

    /// Takes the next octets; appends what passes to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.done {
                out.extend_from_slice(input);
                return;
            }
            if self.at_line_start {
                self.at_line_start = false;
                match input[0] {
                    b' ' | b'\t' => {} // a folded line: the same field goes on
                    b'\r' | b'\n' => {
                        self.end_field(out);
                        self.ending = true;
                    }
                    _ => {
                        self.end_field(out);
                        self.mode = Mode::Name;
                    }
                }
            }
            let (line, line_ends) = match input.iter().position(|&b| b == b'\n') {
                Some(at) => (&input[..=at], true),
                None => (input, false),
            };
            input = &input[line.len()..];
            match self.mode {
                Mode::Pass => out.extend_from_slice(line),
                Mode::Drop => {}
                Mode::Held => {
                    let room = line.len().min(FIELD_CAP.saturating_sub(self.held.len()));
                    self.held.extend_from_slice(&line[..room]);
                    if self.held.len() >= FIELD_CAP {
                        self.judge(out, Mode::Drop);
                        if self.mode == Mode::Pass {
                            out.extend_from_slice(&line[room..]);
                        }
                    }
                }
                Mode::Name => {
                    self.held.extend_from_slice(line);
                    if let Some(colon) = self.held.iter().position(|&b| b == b':') {
                        let name = self.held[..colon].trim_ascii_end();
                        if name.eq_ignore_ascii_case(self.name.as_bytes()) {
                            self.mode = Mode::Held;
                            if self.held.len() >= FIELD_CAP {
                                self.judge(out, Mode::Drop);
                            }
                        } else {
                            self.release(out);
                        }
                    } else if line_ends || self.held.len() > 256 {
                        self.release(out); // no name: not a field of ours to judge
                    }
                }
            }
            if line_ends {
                self.at_line_start = true;
                if self.ending {
                    self.done = true;
                }
            }
        }
    }

    /// The message ended: a field still held is judged.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.end_field(out);
    }

    fn end_field(&mut self, out: &mut Vec<u8>) {
        match self.mode {
            Mode::Held => self.judge(out, Mode::Pass),
            Mode::Name => self.release(out),
            Mode::Pass | Mode::Drop => self.mode = Mode::Pass,
        }
    }

    /// Judges the held field: removed, or passed on; then `next` (what follows of a field
    /// judged early).
    fn judge(&mut self, out: &mut Vec<u8>, next: Mode) {
        let colon = self.held.iter().position(|&b| b == b':').map_or(0, |c| c + 1);
        if (self.remove)(&self.held[colon..]) {
            self.removed += 1;
            self.held.clear();
            self.mode = next;
        } else {
            self.release(out);
        }
    }

    fn release(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.mode = Mode::Pass;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_with_their_folding() {
        let m = b"Subject: one\r\n two\r\nFrom: a@b\r\n\r\nbody\r\n";
        let (h, body) = Headers::parse(m);
        assert_eq!(h.get("subject").as_deref(), Some("one two"));
        assert_eq!(h.get("FROM").as_deref(), Some("a@b"));
        assert_eq!(&m[body..], b"body\r\n");
        let (h, body) = Headers::parse(b"To: x\n\nhi\n");
        assert_eq!((h.get("to").as_deref(), body), (Some("x"), 7));
    }

    #[test]
    fn a_line_that_is_no_field_starts_the_body() {
        let m = b"Subject: s\nthis is text\n";
        let (h, body) = Headers::parse(m);
        assert_eq!(h.fields.len(), 1);
        assert_eq!(&m[body..], b"this is text\n");
        let (h, body) = Headers::parse(b"no header at all");
        assert!(h.fields.is_empty());
        assert_eq!(body, 0);
    }

    #[test]
    fn the_scan_stops_at_the_blank_line_under_every_split() {
        let m = b"Message-ID: <1@x>\r\nSubject: s\r\n\r\nMessage-ID: <body@x>\r\n";
        for split in 1..m.len() {
            let mut scan = HeaderScan::new(1024);
            for chunk in m.chunks(split) {
                scan.feed(chunk);
            }
            let h = scan.headers();
            assert_eq!(h.get("message-id").as_deref(), Some("<1@x>"), "split {split}");
            assert_eq!(h.fields.len(), 2);
        }
        let mut capped = HeaderScan::new(10);
        capped.feed(m);
        assert!(capped.headers().get("subject").is_none());
        assert!(capped.overflowed(), "the header section went past the cap");
        let mut whole = HeaderScan::new(m.len());
        whole.feed(m);
        assert!(whole.is_done() && !whole.overflowed());
        let mut bodyless = HeaderScan::new(1024);
        bodyless.feed(b"Subject: no body\r\n");
        assert!(!bodyless.overflowed(), "a short message without a body is whole");
    }

    #[test]
    fn message_ids_are_taken_from_their_brackets() {
        assert_eq!(message_id(" <a.b@c> (comment)").as_deref(), Some("<a.b@c>"));
        assert_eq!(message_id("no brackets"), None);
        assert_eq!(message_id("<a b@c>"), None);
    }

    #[test]
    fn address_lists_yield_their_addr_specs() {
        assert_eq!(addresses("a@b.example"), ["a@b.example"]);
        assert_eq!(addresses("Alice <alice@x>, \"Smith, Bob\" <bob@y>"), ["alice@x", "bob@y"]);
        assert_eq!(addresses("carol@z (Carol, at work), root"), ["carol@z", "root"]);
        assert_eq!(addresses("team: d@e, f@g;, h@i"), ["d@e", "f@g", "h@i"]);
        assert_eq!(addresses("undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(addresses("<@relay.example:j@k>"), ["j@k"]);
        // A route with nothing after it is no address (found by the fuzz target).
        assert_eq!(addresses("a1D.<@D:"), Vec::<String>::new());
        assert_eq!(addresses(""), Vec::<String>::new());
    }
    fn filtered(message: &[u8], piece: usize) -> (String, usize) {
        let mut filter = FieldFilter::new("authentication-results", |v: &[u8]| v.trim_ascii().starts_with(b"us;"));
        let mut out = Vec::new();
        for chunk in message.chunks(piece.max(1)) {
            filter.feed(chunk, &mut out);
        }
        filter.finish(&mut out);
        (String::from_utf8(out).unwrap(), filter.removed())
    }

    #[test]
    fn a_field_filter_removes_only_the_fields_it_judges_in_any_pieces() {
        let message = b"Received: from x\r\n\tby y\r\nAuthentication-Results: us; spf=pass\r\n\
                        authentication-results : them; none\r\nAUTHENTICATION-RESULTS:\r\n us;\r\n  dkim=pass\r\n\
                        Subject: hi\r\n\r\nAuthentication-Results: us; body\r\n";
        let want = "Received: from x\r\n\tby y\r\nauthentication-results : them; none\r\n\
                    Subject: hi\r\n\r\nAuthentication-Results: us; body\r\n";
        for piece in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(filtered(message, piece), (want.to_string(), 2), "pieces of {piece}");
        }
        // The last field, with no body after it, is judged at the end.
        assert_eq!(filtered(b"A: b\r\nAuthentication-Results: us; x\r\n", 5), ("A: b\r\n".into(), 1));
        // No header section at all.
        assert_eq!(filtered(b"\r\nAuthentication-Results: us;\r\n", 1).1, 0);
    }

    #[test]
    fn a_field_too_long_to_hold_is_judged_on_its_start() {
        let mut ours = b"Authentication-Results: us; ".to_vec();
        ours.extend(std::iter::repeat_n(b'x', FIELD_CAP * 2));
        ours.extend(b"\r\nSubject: s\r\n\r\nbody\r\n");
        assert_eq!(filtered(&ours, 1000), ("Subject: s\r\n\r\nbody\r\n".into(), 1));
        let mut theirs = b"Authentication-Results: them; ".to_vec();
        theirs.extend(std::iter::repeat_n(b'x', FIELD_CAP * 2));
        theirs.extend(b"\r\n\r\nbody\r\n");
        assert_eq!(filtered(&theirs, 1000), (String::from_utf8(theirs.clone()).unwrap(), 0));
    }
}
