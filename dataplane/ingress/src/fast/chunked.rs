//! Finding the end of a `Transfer-Encoding: chunked` body while its bytes pass through unchanged.
//!
//! The fast path relays chunked responses byte for byte; it only needs to know where the body ends (after the last
//! chunk and the trailer section) to keep the upstream connection for the next request. The grammar is RFC 9112
//! §7.1, strictly: CRLF line ends, hexadecimal sizes of at most 15 digits, extensions and trailers skipped but
//! bounded.

/// Longest chunk-size line (size, extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// A chunked body that does not follow the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hexadecimal size (`digits` read so far).
    Size { size: u64, digits: u8 },
    /// After the size: optional whitespace and extensions up to CR.
    Extension { size: u64 },
    /// CR seen after the size line; LF expected.
    SizeLf { size: u64 },
    /// Inside chunk data, `left` bytes to go.
    Data { left: u64 },
    /// After chunk data: CR expected.
    DataCr,
    /// After chunk data: LF expected.
    DataLf,
    /// At the start of a trailer line (or the final CRLF).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// CR seen at the end of a trailer line; LF expected.
    TrailerLf,
    /// CR of the final empty line seen; LF expected.
    FinalLf,
    /// The body ended.
    Done,
}

/// Tracks the framing of one chunked body.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    line: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunked {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Chunked { state: State::Size { size: 0, digits: 0 }, line: 0 }
    }

    /// Whether the whole body has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scans the next bytes of the body. Returns how many of them belong to it: all of `input` while the body goes
    /// on, fewer when it ended inside `input` (what follows is not part of this body).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        self.feed_with(input, |_| {})
    }

    /// [`Chunked::feed`], calling `data` with each run of chunk data in `input` (the body decoded, for a client
    /// that gets it without the chunked framing: HTTP/2).
    pub fn feed_with(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if let State::Data { left } = self.state {
                let take = left.min((input.len() - i) as u64);
                data(&input[i..i + take as usize]);
                i += take as usize;
                self.state = if left == take { State::DataCr } else { State::Data { left: left - take } };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            let b = input[i];
            i += 1;
            self.line += 1;
            if self.line > MAX_LINE {
                return Err(ChunkError("line too long"));
            }
            self.state = match self.state {
                State::Size { size, digits } => match hex(b) {
                    Some(d) if digits < 15 => State::Size { size: size << 4 | u64::from(d), digits: digits + 1 },
                    Some(_) => return Err(ChunkError("chunk size too large")),
                    None if digits == 0 => return Err(ChunkError("chunk size expected")),
                    None if b == b'\r' => State::SizeLf { size },
                    None if b == b';' || b == b' ' || b == b'\t' => State::Extension { size },
                    None => return Err(ChunkError("bad character in chunk size")),
                },
                State::Extension { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(ChunkError("bare LF")),
                    _ => State::Extension { size },
                },
                State::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => self.new_line(State::TrailerStart),
                    (b'\n', left) => self.new_line(State::Data { left }),
                    _ => return Err(ChunkError("LF expected after chunk size")),
                },
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => self.new_line(State::Size { size: 0, digits: 0 }),
                State::DataCr | State::DataLf => return Err(ChunkError("CRLF expected after chunk data")),
                State::TrailerStart => match b {
                    b'\r' => State::FinalLf,
                    b'\n' => return Err(ChunkError("bare LF")),
                    _ => State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkError("bare LF")),
                    _ => State::Trailer,
                },
                State::TrailerLf if b == b'\n' => self.new_line(State::TrailerStart),
                State::FinalLf if b == b'\n' => State::Done,
                State::TrailerLf | State::FinalLf => return Err(ChunkError("LF expected")),
                State::Data { .. } | State::Done => unreachable!("handled before reading a byte"),
            };
        }
        Ok(i)
    }

    fn new_line(&mut self, next: State) -> State {
        self.line = 0;
        next
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns the bytes consumed when the body ended.
    fn scan(body: &[u8], step: usize) -> Result<Option<usize>, ChunkError> {
        let mut c = Chunked::new();
        let mut at = 0;
        for piece in body.chunks(step) {
            let n = c.feed(piece)?;
            at += n;
            if c.is_done() {
                return Ok(Some(at));
            }
            assert_eq!(n, piece.len(), "an unfinished body consumes everything it is given");
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n";
        for step in 1..=body.len() {
            assert_eq!(scan(body, step), Ok(Some(body.len())), "step {step}");
        }
    }

    #[test]
    fn stops_at_the_end_and_leaves_what_follows() {
        let mut bytes = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let end = bytes.len();
        bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut c = Chunked::new();
        assert_eq!(c.feed(&bytes), Ok(end));
        assert!(c.is_done());
    }

    #[test]
    fn trailers_are_part_of_the_body() {
        let body = b"0\r\nExpires: never\r\nX-Checksum: 1\r\n\r\n";
        assert_eq!(scan(body, 3), Ok(Some(body.len())));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(scan(b"5\r\nhel", 2), Ok(None));
        assert_eq!(scan(b"0\r\n", 1), Ok(None));
        assert_eq!(scan(b"0\r\n\r", 1), Ok(None));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"1234567890abcdef0\r\n",
            b"0\r\n\n",
            b"0\r\nTrailer: x\n",
        ] {
            assert!(scan(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"1;".as_slice(), &[b'x'; MAX_LINE], b"\r\n"].concat();
        assert!(scan(&long, 100).is_err());
    }

    #[test]
    fn the_data_is_decoded_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        for step in 1..=body.len() {
            let (mut c, mut decoded) = (Chunked::new(), Vec::new());
            for piece in body.chunks(step) {
                c.feed_with(piece, |d| decoded.extend_from_slice(d)).expect("well-formed");
            }
            assert!(c.is_done(), "step {step}");
            assert_eq!(decoded, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        }
    }

    #[test]
    fn large_chunk_sizes_are_counted_not_buffered() {
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"100000\r\n"), Ok(8));
        let data = vec![b'a'; 0x100000];
        assert_eq!(c.feed(&data), Ok(data.len()));
        assert_eq!(c.feed(b"\r\n0\r\n\r\n"), Ok(7));
        assert!(c.is_done());
    }
}
