//! The framer and the DATA reader give the same result however the input is split across reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern::smtp::line::{DotReader, Line, LineBuffer, MAX_COMMAND_LINE};

/// Hands out `data` in chunks whose sizes cycle through `sizes`.
struct Chunks<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    turn: usize,
}

impl std::io::Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.sizes[self.turn % self.sizes.len()].min(buf.len()).min(self.data.len());
        self.turn += 1;
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn lines(data: &[u8], sizes: Vec<usize>) -> Vec<Line> {
    let (mut src, mut buf, mut out) = (Chunks { data, sizes, turn: 0 }, LineBuffer::new(0), Vec::new());
    loop {
        match buf.read_line(&mut src, MAX_COMMAND_LINE).unwrap() {
            Line::Eof => return out,
            line => out.push(line),
        }
    }
}

fn unstuff(data: &[u8], sizes: &[usize]) -> (Vec<u8>, Option<usize>, u64) {
    let (mut reader, mut out, mut used, mut rest) = (DotReader::new(4096), Vec::new(), 0, data);
    for &size in sizes.iter().cycle() {
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        let (n, done) = reader.feed(chunk, &mut out);
        used += n;
        if done || after.is_empty() {
            return (out, done.then_some(used), reader.size());
        }
        rest = after;
    }
    unreachable!()
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else { return };
    let sizes = vec![1 + usize::from(seed % 7), 1 + usize::from(seed / 7 % 11), 1 + usize::from(seed / 77) * 600];
    assert_eq!(lines(input, sizes.clone()), lines(input, vec![usize::MAX]));
    assert_eq!(unstuff(input, &sizes), unstuff(input, &[usize::MAX]));
});
