//! Framing: bounded command lines (`LineBuffer`) and DATA un-stuffing (`DotReader`).
//!
//! Both are fed bytes and never read by themselves, so every split of the input
//! across reads gives the same result; the server owns the socket.

use std::io::{self, Read};

/// §4.5.3.1.4 gives 512 octets; ESMTP parameters need more, as every MTA allows.
pub const MAX_COMMAND_LINE: usize = 2048;

/// One framed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line without its CRLF.
    Complete(Vec<u8>),
    /// A line ended by LF without CR before it (RFC 5321 §2.3.8: only CRLF ends a line). It
    /// is not handed on: a peer that frames lines otherwise than we do is how commands get
    /// smuggled, so what it meant by the bytes that follow is not known either.
    BareLf,
    /// The line was longer than the cap; it was discarded up to its LF.
    TooLong,
    /// The peer closed the connection (a partial line is dropped).
    Eof,
}

/// A read-ahead buffer shared by command and DATA reading, so pipelined input
/// after any command is never lost (RFC 2920 §3.2).
pub struct LineBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    discarding: bool,
}

impl LineBuffer {
    pub fn new(capacity: usize) -> LineBuffer {
        LineBuffer { buf: vec![0; capacity.max(MAX_COMMAND_LINE * 2)], start: 0, end: 0, discarding: false }
    }

    /// Bytes read from the peer and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Drops all read-ahead: after STARTTLS, plaintext must not be acted on (RFC 3207 §4.2).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.discarding = false;
    }

    /// Reads more bytes from `src`; returns how many (0 at end of input).
    pub fn fill(&mut self, src: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = src.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Takes one line from what is buffered, if a whole one is there.
    /// A line over `max` octets is thrown away up to its LF and reported once.
    pub fn take_line(&mut self, max: usize) -> Option<Line> {
        let pending = &self.buf[self.start..self.end];
        match pending.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let line = &pending[..lf];
                let (body, crlf) = match line.strip_suffix(b"\r") {
                    Some(body) => (body, true),
                    None => (line, false),
                };
                let result = match (self.discarding || body.len() > max, crlf) {
                    (true, _) => Line::TooLong,
                    (false, true) => Line::Complete(body.to_vec()),
                    (false, false) => Line::BareLf,
                };
                self.start += lf + 1;
                self.discarding = false;
                Some(result)
            }
            None => {
                if pending.len() > max {
                    self.discarding = true;
                    self.start = self.end;
                }
                None
            }
        }
    }

    /// Reads until one line is complete.
    pub fn read_line(&mut self, src: &mut impl Read, max: usize) -> io::Result<Line> {
        loop {
            if let Some(line) = self.take_line(max) {
                return Ok(line);
            }
            if self.fill(src)? == 0 {
                return Ok(Line::Eof);
            }
        }
    }
}

/// What went wrong in a message text, reported after the final dot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// A CR or LF not part of a CRLF pair (RFC 5321 §2.3.8; the smuggling class).
    BareLineEnding,
    /// More octets than the limit.
    TooBig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DotState {
    /// At the start of a line (the CRLF ending DATA counts as the first).
    LineStart,
    /// A line began with a dot.
    Dot,
    /// A line was `.` then CR.
    DotCr,
    InLine,
    /// A CR was seen; only LF may follow.
    Cr,
}

/// Finds the end of DATA and removes dot-stuffing (§4.5.2).
///
/// The only end is `CRLF . CRLF`. Any other CR or LF marks the message bad, but
/// reading goes on to the real end, so nothing after a fake end is ever taken
/// for a command. Past the size cap bytes are counted, not kept.
pub struct DotReader {
    state: DotState,
    size: u64,
    max: u64,
    error: Option<TextError>,
}

impl DotReader {
    pub fn new(max: u64) -> DotReader {
        DotReader { state: DotState::LineStart, size: 0, max, error: None }
    }

    /// Un-stuffed octets seen so far, counting those past the cap.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first fault found so far.
    pub fn error(&self) -> Option<TextError> {
        self.error
    }

    fn fault(&mut self, e: TextError) {
        self.error.get_or_insert(e);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.max {
            self.fault(TextError::TooBig);
        }
        if self.error.is_none() {
            out.extend_from_slice(bytes);
        }
    }

    /// Consumes input; appends message octets to `out` (CRLF line ends, dots removed).
    /// Returns the number of input bytes used and whether the end was found.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            if self.state == DotState::InLine {
                // Fast path: copy the rest of an ordinary line in one go.
                let run = input[i..].iter().position(|&c| c == b'\r' || c == b'\n').unwrap_or(input.len() - i);
                if run > 0 {
                    self.emit(&input[i..i + run], out);
                    i += run;
                    continue;
                }
            }
            i += 1;
            if self.step(b, out) {
                return (i, true);
            }
        }
        (input.len(), false)
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        use DotState::*;
        self.state = match (self.state, b) {
            (LineStart, b'.') => Dot,
            (Dot, b'\r') => DotCr,
            (LineStart | InLine, b'\r') => Cr,
            (DotCr, b'\n') => return true,
            (Cr, b'\n') => {
                self.emit(b"\r\n", out);
                LineStart
            }
            (_, b'\n') => {
                self.fault(TextError::BareLineEnding);
                InLine
            }
            (Cr | DotCr, b'\r') => {
                self.fault(TextError::BareLineEnding);
                Cr
            }
            (Cr | DotCr, other) => {
                self.fault(TextError::BareLineEnding);
                self.emit(&[other], out);
                InLine
            }
            (_, other) => {
                self.emit(&[other], out);
                InLine
            }
        };
        false
    }
}

/// Writes a message for DATA, the inverse of `DotReader`: dots at line starts doubled (§4.5.2), any CR or LF not in a
/// CRLF pair sent as a space (RFC 5321 §2.3.8: no bare CR or LF), a missing final CRLF added, then the lone dot.
pub struct DotStuffer {
    line_start: bool,
    held_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer { line_start: true, held_cr: false }
    }
}

impl DotStuffer {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if self.held_cr {
                self.held_cr = false;
                if b == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    self.line_start = true;
                    continue;
                }
                self.byte(b' ', out);
            }
            match b {
                b'\r' => self.held_cr = true,
                b'\n' => self.byte(b' ', out),
                b => self.byte(b, out),
            }
        }
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        self.line_start = false;
    }

    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.held_cr {
            self.held_cr = false;
            self.byte(b' ', out);
        }
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Counts `Received:` header fields in the header section only (RFC 5321 §6.3).
pub struct HopCounter {
    hops: usize,
    line_start: bool,
    prefix: [u8; 9],
    prefix_len: usize,
    in_header: bool,
}

impl Default for HopCounter {
    fn default() -> Self {
        HopCounter { hops: 0, line_start: true, prefix: [0; 9], prefix_len: 0, in_header: true }
    }
}

impl HopCounter {
    pub fn hops(&self) -> usize {
        self.hops
    }

    /// Scans message octets (CRLF line ends, already un-stuffed).
    pub fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if !self.in_header {
                return;
            }
            if b == b'\n' {
                if self.line_start && self.prefix_len == 0 {
                    self.in_header = false; // the blank line ends the header
                }
                self.line_start = true;
                self.prefix_len = 0;
                continue;
            }
            if b == b'\r' || !self.line_start {
                continue;
            }
            self.prefix[self.prefix_len] = b;
            self.prefix_len += 1;
            if self.prefix_len == self.prefix.len() {
                if self.prefix.eq_ignore_ascii_case(b"received:") {
                    self.hops += 1;
                }
                self.line_start = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_stray_line_ends() {
        let mut out = Vec::new();
        let mut s = DotStuffer::default();
        s.push(b"a\r\n.\r\nb\r\n..x\r\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a\r\n..\r\nb\r\n...x\r\n.\r\n");
        let mut out = Vec::new();
        let mut s = DotStuffer::default();
        s.push(b"a\n.\nb", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a . b\r\n.\r\n", "stray LF becomes a space and never ends a line");
        for split in 0..6 {
            let input = b"x\r\n.y\r\n";
            let mut out = Vec::new();
            let mut s = DotStuffer::default();
            s.push(&input[..split], &mut out);
            s.push(&input[split..], &mut out);
            s.finish(&mut out);
            assert_eq!(out, b"x\r\n..y\r\n.\r\n", "split {split}");
        }
        let mut out = Vec::new();
        DotStuffer::default().finish(&mut out);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn the_dot_reader_undoes_the_stuffer_under_any_split() {
        let texts: [&[u8]; 4] = [b"", b"a\r\n.\r\n..\r\n.x", b".\r\n", b"Subject: x\r\n\r\nbody\r\n.\r\n"];
        for text in texts {
            let mut wire = Vec::new();
            let mut s = DotStuffer::default();
            s.push(text, &mut wire);
            s.finish(&mut wire);
            let mut expected = text.to_vec();
            if !expected.is_empty() && !expected.ends_with(b"\r\n") {
                expected.extend_from_slice(b"\r\n");
            }
            for split in 0..=wire.len() {
                let mut reader = DotReader::new(1 << 20);
                let mut out = Vec::new();
                let (used, done) = reader.feed(&wire[..split], &mut out);
                let (rest, end) = if done { (0, true) } else { reader.feed(&wire[used..], &mut out) };
                assert!(end && reader.error().is_none(), "split {split} of {wire:?}");
                assert_eq!(used + rest, wire.len(), "split {split}: the end marker ends the text");
                assert_eq!(out, expected, "split {split}");
            }
        }
    }

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut lb = LineBuffer::new(64);
        let mut src = input;
        let mut out = Vec::new();
        loop {
            match lb.read_line(&mut src, max).unwrap() {
                Line::Eof => return out,
                l => out.push(l),
            }
        }
    }

    #[test]
    fn only_crlf_ends_a_line_and_a_bare_lf_is_reported() {
        assert_eq!(
            lines(b"NOOP\r\nQUIT\nRSET\r\n", 100),
            vec![Line::Complete(b"NOOP".to_vec()), Line::BareLf, Line::Complete(b"RSET".to_vec())]
        );
        assert_eq!(lines(b"\n", 100), vec![Line::BareLf]);
        assert_eq!(lines(b"NOOP\rNOOP\r\n", 100), vec![Line::Complete(b"NOOP\rNOOP".to_vec())], "a CR inside stays");
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_its_tail_discarded() {
        let mut input = vec![b'X'; 3000];
        input.extend_from_slice(b"QUIT\r\nNOOP\r\n");
        assert_eq!(lines(&input, MAX_COMMAND_LINE), vec![Line::TooLong, Line::Complete(b"NOOP".to_vec())]);
    }

    #[test]
    fn a_line_at_the_cap_is_kept() {
        let mut input = vec![b'N'; 2048];
        input.extend_from_slice(b"\r\n");
        assert_eq!(lines(&input, 2048), vec![Line::Complete(vec![b'N'; 2048])]);
    }

    fn data(input: &[u8], max: u64) -> (Vec<u8>, Option<TextError>, usize) {
        let mut r = DotReader::new(max);
        let mut out = Vec::new();
        let (used, done) = r.feed(input, &mut out);
        assert!(done, "no end found in {input:?}");
        (out, r.error(), used)
    }

    #[test]
    fn dot_stuffing_is_removed() {
        let (out, err, _) = data(b"a\r\n.foo\r\n..\r\n\r\n.\r\n", 1000);
        assert_eq!(out, b"a\r\nfoo\r\n.\r\n\r\n");
        assert_eq!(err, None);
    }

    #[test]
    fn empty_message_ends_at_once() {
        assert_eq!(data(b".\r\nQUIT\r\n", 10), (Vec::new(), None, 3));
    }

    #[test]
    fn smuggling_endings_are_not_ends() {
        let smuggled = b"MAIL FROM:<ceo@victim.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nx\r\n.\r\n";
        for fake in [&b"\n.\n"[..], b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r.\n", b"\n.\r", b"\r.\r\n", b"\r\n.\r"] {
            let mut input = b"Subject: t\r\n\r\nhello".to_vec();
            input.extend_from_slice(fake);
            input.extend_from_slice(smuggled);
            let (_, err, used) = data(&input, 1 << 20);
            assert_eq!(err, Some(TextError::BareLineEnding), "{fake:?}");
            assert_eq!(used, input.len(), "{fake:?} ended early");
        }
    }

    #[test]
    fn nul_before_the_dot_is_not_an_end() {
        let mut r = DotReader::new(100);
        let mut out = Vec::new();
        assert_eq!(r.feed(b"a\r\n\x00.\r\n", &mut out), (7, false));
    }

    #[test]
    fn the_end_survives_any_split() {
        let input = b"hello\r\n.\r\nQUIT\r\n";
        for split in 0..input.len() {
            let mut r = DotReader::new(100);
            let mut out = Vec::new();
            let (a, done_a) = r.feed(&input[..split], &mut out);
            let total = if done_a { a } else { a + r.feed(&input[split..], &mut out).0 };
            assert_eq!((total, out.as_slice()), (10, &b"hello\r\n"[..]), "split at {split}");
        }
    }

    #[test]
    fn oversize_is_counted_to_the_end() {
        let (out, err, _) = data(b"0123456789\r\n.\r\n", 5);
        assert_eq!(err, Some(TextError::TooBig));
        assert!(out.len() <= 5);
    }

    #[test]
    fn long_text_lines_are_kept_intact() {
        let mut input = vec![b'x'; 5000];
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, err, _) = data(&input, 1 << 20);
        assert_eq!((out.len(), err), (5002, None));
    }

    #[test]
    fn hops_are_counted_in_the_header_only() {
        let mut h = HopCounter::default();
        h.scan(b"Received: a\r\n\tb\r\nRECEIVED: c\r\nSubject: x\r\n\r\nReceived: body\r\n");
        assert_eq!(h.hops(), 2);
        let mut split = HopCounter::default();
        for b in b"Rec".iter().chain(b"eived: x\r\n") {
            split.scan(&[*b]);
        }
        assert_eq!(split.hops(), 1);
    }
}
