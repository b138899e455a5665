//! DKIM canonicalization (RFC 6376 §3.4), one for signing and verifying: header fields
//! simple or relaxed, and the body fed in pieces into its hash, simple or relaxed, with the
//! body length limit of `l=` (§3.5).

use openssl::sha::Sha256;

/// A canonicalization algorithm (§3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    Simple,
    Relaxed,
}

impl Canon {
    pub fn name(self) -> &'static str {
        match self {
            Canon::Simple => "simple",
            Canon::Relaxed => "relaxed",
        }
    }
}

/// §3.4.1 and §3.4.2: one header field as it is hashed, CRLF-ended. `name` and `value` as
/// the header parser gives them: the name as written, the value from after the colon to
/// before the field's last CRLF, folding kept.
pub fn header(canon: Canon, name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    header_into(canon, name, value, &mut out);
    out
}

/// `header`, appended to `out` (the signed data, built without a buffer per field).
pub fn header_into(canon: Canon, name: &str, value: &[u8], out: &mut Vec<u8>) {
    match canon {
        Canon::Simple => {
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        Canon::Relaxed => relaxed_header_into(name, value, out),
    }
}

/// §3.4.2: a header field in relaxed form: the name in lower case, unfolded, each run of
/// white space one space, none at the ends of the value, then CRLF.
pub fn relaxed_header(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + value.len() + 3);
    relaxed_header_into(name, value, &mut out);
    out
}

/// `relaxed_header`, appended to `out`.
pub fn relaxed_header_into(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.extend(name.trim_end_matches([' ', '\t']).bytes().map(|b| b.to_ascii_lowercase()));
    out.push(b':');
    // White space before the value's first character goes (§3.4.2), and only there: a colon
    // inside the value keeps the space after it.
    let (mut space, mut started) = (false, false);
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = true,
            _ => {
                if space && started {
                    out.push(b' ');
                }
                space = false;
                started = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a line (without its CRLF) is its own relaxed form (§3.4.4): no tab, no two
/// spaces in a row, no space at its end. One pass, comparing octets (a window compared as a
/// slice costs a call per octet).
fn already_relaxed(line: &[u8]) -> bool {
    let mut space = false;
    for &b in line {
        match b {
            b'\t' => return false,
            b' ' if space => return false,
            b' ' => space = true,
            _ => space = false,
        }
    }
    !space
}

/// A body fed in pieces (CRLF lines, a last line without one allowed) into SHA-256 of its
/// canonical form (§3.4.3, §3.4.4): empty lines at the end removed; relaxed also removes
/// white space at line ends and makes each run of it one space. Only the hash, the line in
/// progress and a count of held-back empty lines are kept.
pub struct Body {
    canon: Canon,
    hasher: Sha256,
    /// `l=`: octets of the canonical body hashed at most.
    limit: Option<u64>,
    /// Canonical octets so far (also those past `limit`, which are not hashed).
    length: u64,
    /// The current line, not yet complete.
    line: Vec<u8>,
    /// Canonical octets not yet given to the hash: it is fed in large pieces, not line by line.
    out: Vec<u8>,
    /// Empty lines seen but not yet written: they count only if more text follows.
    empty_lines: u64,
    /// Anything but held-back empty lines was seen (a simple empty body is one CRLF).
    text: bool,
}

/// Canonical octets gathered before they go to the hash.
const HASH_PIECE: usize = 16 * 1024;

impl Body {
    pub fn new(canon: Canon, limit: Option<u64>) -> Body {
        // OpenSSL's SHA-256 itself, not through a digest fetched by name for each body.
        let hasher = Sha256::new();
        // Room for a usual message's body at once, so it is not grown piece by piece.
        let (line, out) = (Vec::new(), Vec::with_capacity(8 * 1024));
        Body { canon, hasher, limit, length: 0, line, out, empty_lines: 0, text: false }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            if self.line.is_empty() {
                self.end_line(&bytes[..i])?; // the whole line is here: no copy
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..i]);
                self.end_line(&line)?;
                line.clear();
                self.line = line;
            }
            bytes = &bytes[i + 1..];
        }
        self.line.extend_from_slice(bytes);
        if self.out.len() >= HASH_PIECE {
            self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) {
        self.hasher.update(&self.out);
        self.out.clear();
    }

    /// Gives `bytes` of the canonical body to the hash, up to `limit`.
    fn emit(&mut self, bytes: &[u8]) {
        let room = match self.limit {
            Some(limit) => usize::try_from(limit.saturating_sub(self.length)).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        self.length = self.length.saturating_add(bytes.len() as u64);
        self.out.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// One line, without its LF.
    fn end_line(&mut self, raw: &[u8]) -> Result<(), String> {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let empty = match self.canon {
            Canon::Simple => raw.is_empty(),
            Canon::Relaxed => raw.iter().all(|&b| b == b' ' || b == b'\t'),
        };
        if empty {
            self.empty_lines += 1;
            return Ok(());
        }
        for _ in 0..std::mem::take(&mut self.empty_lines) {
            self.emit(b"\r\n");
        }
        self.text = true;
        match self.canon {
            Canon::Simple => self.emit(raw),
            Canon::Relaxed if already_relaxed(raw) => self.emit(raw), // the common line
            Canon::Relaxed => {
                let mut canonical = Vec::with_capacity(raw.len());
                let mut space = false;
                for &b in raw {
                    if b == b' ' || b == b'\t' {
                        space = true;
                    } else {
                        if space {
                            canonical.push(b' ');
                        }
                        space = false;
                        canonical.push(b);
                    }
                }
                self.emit(&canonical);
            }
        }
        self.emit(b"\r\n");
        Ok(())
    }

    /// The body hash (`bh=`), and the length of the whole canonical body.
    pub fn finish(mut self) -> Result<(Vec<u8>, u64), String> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.end_line(&line)?; // the last line had no CRLF: it gets one
        }
        if self.canon == Canon::Simple && !self.text {
            // §3.4.3: an empty body is one CRLF.
            self.emit(b"\r\n");
        }
        self.flush();
        let hash = self.hasher.finish().to_vec();
        Ok((hash, self.length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(canon: Canon, limit: Option<u64>, body: &[u8]) -> String {
        let mut b = Body::new(canon, limit);
        b.feed(body).unwrap();
        openssl::base64::encode_block(&b.finish().unwrap().0)
    }

    fn sha(data: &[u8]) -> String {
        openssl::base64::encode_block(&openssl::sha::sha256(data))
    }

    #[test]
    fn relaxed_body_examples() {
        let r = |b: &[u8]| hash(Canon::Relaxed, None, b);
        // §3.4.6's example body, relaxed: " C\r\nD E\r\n".
        assert_eq!(r(b" C \r\nD \t E\r\n\r\n\r\n"), sha(b" C\r\nD E\r\n"));
        // The empty body hashes as nothing at all (the well-known value).
        assert_eq!(r(b""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        assert_eq!(r(b"\r\n\r\n"), r(b""));
        assert_eq!(r(b"x"), r(b"x\r\n"), "a last line without CRLF gets one");
        let text = b"a  b \r\n\r\nc\t\r\n\r\n";
        let mut pieces = Body::new(Canon::Relaxed, None);
        for chunk in text.chunks(3) {
            pieces.feed(chunk).unwrap();
        }
        assert_eq!(openssl::base64::encode_block(&pieces.finish().unwrap().0), r(text));
    }

    #[test]
    fn relaxed_lines_hash_as_their_canonical_form_whether_rewritten_or_not() {
        // §3.4.4: a line already relaxed is hashed as it is, any other rewritten.
        let lines: [(&[u8], &[u8]); 7] = [
            (b"plain text", b"plain text"),
            (b" lead", b" lead"),
            (b"a  b", b"a b"),
            (b"a\tb", b"a b"),
            (b"end ", b"end"),
            (b"x \t y\t", b"x y"),
            (b"bare\rcr", b"bare\rcr"),
        ];
        for (raw, canonical) in lines {
            let body = [raw, b"\r\n"].concat();
            let want = sha(&[canonical, b"\r\n"].concat());
            assert_eq!(hash(Canon::Relaxed, None, &body), want, "{}", String::from_utf8_lossy(raw));
        }
        // A body larger than one piece for the hash, fed in pieces, with a limit inside it.
        let big: Vec<u8> = (0..3000).flat_map(|i| format!("line {i}  of\tmany \r\n").into_bytes()).collect();
        let canonical: Vec<u8> = (0..3000).flat_map(|i| format!("line {i} of many\r\n").into_bytes()).collect();
        for limit in [None, Some(40_000u64)] {
            let mut body = Body::new(Canon::Relaxed, limit);
            for piece in big.chunks(1000) {
                body.feed(piece).unwrap();
            }
            let (got, length) = body.finish().unwrap();
            let hashed = &canonical[..limit.map_or(canonical.len(), |l| l as usize)];
            assert_eq!(openssl::base64::encode_block(&got), sha(hashed));
            assert_eq!(length, canonical.len() as u64);
        }
    }

    #[test]
    fn simple_body_examples() {
        let s = |b: &[u8]| hash(Canon::Simple, None, b);
        // §3.4.6's example body, simple: " C \r\nD \t E\r\n".
        assert_eq!(s(b" C \r\nD \t E\r\n\r\n\r\n"), sha(b" C \r\nD \t E\r\n"));
        // §3.4.3: an empty body is CRLF (the well-known value).
        assert_eq!(s(b""), "frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=");
        assert_eq!(s(b"\r\n\r\n"), s(b""));
        assert_eq!(s(b"x"), sha(b"x\r\n"));
        assert_eq!(s(b" \r\n"), sha(b" \r\n"), "a line of white space is not empty in simple");
    }

    #[test]
    fn the_length_limit_hashes_a_prefix_and_counts_all() {
        let mut b = Body::new(Canon::Simple, Some(5));
        b.feed(b"hello world\r\n").unwrap();
        let (h, length) = b.finish().unwrap();
        assert_eq!(openssl::base64::encode_block(&h), sha(b"hello"));
        assert_eq!(length, 13);
        assert_eq!(hash(Canon::Relaxed, Some(0), b"x\r\n"), sha(b""));
    }

    #[test]
    fn header_examples() {
        // §3.4.6: "A: X" and "B : Y\t\r\n\tZ  " become "a:X" and "b:Y Z".
        assert_eq!(header(Canon::Relaxed, "A", b" X"), b"a:X\r\n");
        assert_eq!(header(Canon::Relaxed, "B ", b" Y\t\r\n\tZ  "), b"b:Y Z\r\n");
        assert_eq!(header(Canon::Simple, "B ", b" Y\t\r\n\tZ  "), b"B : Y\t\r\n\tZ  \r\n");
        // A colon inside the value keeps the space after it.
        assert_eq!(header(Canon::Relaxed, "Subject", b" Re:  hi : there"), b"subject:Re: hi : there\r\n");
    }
}
