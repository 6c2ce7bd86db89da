//! SPDY/3.1 framing, as much as `kubectl port-forward` speaks (draft-mbelshe-httpbis-spdy-00): data frames and the
//! control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS and WINDOW_UPDATE, with header
//! blocks compressed by zlib over the SPDY/3 dictionary (one compression context per direction for the whole
//! connection).
//!
//! Pure: [`Frame::parse`] takes bytes and [`Frame::encode`] gives bytes; [`HeaderCodec`] keeps the two zlib
//! contexts. The session that uses them is in [`super::portforward`].

use std::sync::LazyLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The largest frame payload accepted (a port-forward client sends at most 32 KiB of data per frame).
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Data frame flag: the sender's last frame on this stream.
pub const FLAG_FIN: u8 = 0x01;

/// RST_STREAM status: the stream is no longer wanted.
pub const RST_CANCEL: u32 = 5;

/// RST_STREAM status: a frame on a stream that is not open.
pub const RST_INVALID_STREAM: u32 = 2;

/// RST_STREAM status: a broken frame.
pub const RST_PROTOCOL_ERROR: u32 = 1;

/// The SPDY/3 header dictionary (section 2.6.10.1 of the draft): length-prefixed words, then a tail of status
/// lines, dates and media types, 1,423 bytes in all. It must be byte-exact or the peer's inflate fails.
pub static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: [&str; 65] = [
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized",
        "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable",
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

/// A framing or compression error: the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// A frame of a version other than 3.
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    /// A payload longer than [`MAX_PAYLOAD`].
    #[error("a frame of {0} bytes is larger than the {MAX_PAYLOAD} allowed")]
    TooLarge(usize),
    /// A control frame shorter than its type needs.
    #[error("a {kind} frame of {len} bytes is too short")]
    Short {
        /// Frame type.
        kind: &'static str,
        /// Its length.
        len: usize,
    },
    /// A header block that does not inflate or parse.
    #[error("bad header block: {0}")]
    Headers(String),
}

/// One SPDY/3 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Data for a stream.
    Data {
        /// Stream.
        stream: u32,
        /// Flags ([`FLAG_FIN`]).
        flags: u8,
        /// Payload.
        data: Vec<u8>,
    },
    /// A new stream from the peer, with its (still compressed) header block.
    SynStream {
        /// Stream.
        stream: u32,
        /// Flags ([`FLAG_FIN`]: no data follows).
        flags: u8,
        /// Compressed header block.
        block: Vec<u8>,
    },
    /// The answer to a SYN_STREAM.
    SynReply {
        /// Stream.
        stream: u32,
        /// Flags.
        flags: u8,
        /// Compressed header block.
        block: Vec<u8>,
    },
    /// A stream ended abnormally.
    RstStream {
        /// Stream.
        stream: u32,
        /// Status code.
        status: u32,
    },
    /// A liveness probe, echoed back.
    Ping(u32),
    /// The peer is going away.
    GoAway {
        /// Last stream it processed.
        last_stream: u32,
    },
    /// A frame this server reads and ignores (SETTINGS, HEADERS, WINDOW_UPDATE, or an unknown control type).
    Ignored(u16),
}

impl Frame {
    /// Parses one frame from the front of `buf`: `Ok(None)` if more bytes are needed, else the frame and the bytes
    /// it used.
    pub fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(SpdyError::TooLarge(len));
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let flags = buf[4];
        let p = &buf[8..8 + len];
        let word = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let need = |kind: &'static str, n: usize| if len < n { Err(SpdyError::Short { kind, len }) } else { Ok(()) };
        if buf[0] & 0x80 == 0 {
            let stream = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) & 0x7fff_ffff;
            return Ok(Some((Frame::Data { stream, flags, data: p.to_vec() }, 8 + len)));
        }
        let version = u16::from_be_bytes([buf[0] & 0x7f, buf[1]]);
        if version != 3 {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([buf[2], buf[3]]);
        let frame = match kind {
            1 => {
                need("SYN_STREAM", 10)?;
                Frame::SynStream { stream: word(0) & 0x7fff_ffff, flags, block: p[10..].to_vec() }
            }
            2 => {
                need("SYN_REPLY", 4)?;
                Frame::SynReply { stream: word(0) & 0x7fff_ffff, flags, block: p[4..].to_vec() }
            }
            3 => {
                need("RST_STREAM", 8)?;
                Frame::RstStream { stream: word(0) & 0x7fff_ffff, status: word(4) }
            }
            6 => {
                need("PING", 4)?;
                Frame::Ping(word(0))
            }
            7 => {
                need("GOAWAY", 4)?;
                Frame::GoAway { last_stream: word(0) & 0x7fff_ffff }
            }
            other => Frame::Ignored(other),
        };
        Ok(Some((frame, 8 + len)))
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
            let mut v = Vec::with_capacity(8 + payload.len());
            v.extend_from_slice(&(0x8003u16).to_be_bytes());
            v.extend_from_slice(&kind.to_be_bytes());
            v.push(flags);
            v.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            v.extend_from_slice(payload);
            v
        }
        let cat = |parts: &[&[u8]]| parts.concat();
        match self {
            Frame::Data { stream, flags, data } => {
                let mut v = Vec::with_capacity(8 + data.len());
                v.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                v.push(*flags);
                v.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                v.extend_from_slice(data);
                v
            }
            Frame::SynStream { stream, flags, block } => {
                control(1, *flags, &cat(&[&stream.to_be_bytes(), &[0; 4], &[0, 0], block]))
            }
            Frame::SynReply { stream, flags, block } => control(2, *flags, &cat(&[&stream.to_be_bytes(), block])),
            Frame::RstStream { stream, status } => control(3, 0, &cat(&[&stream.to_be_bytes(), &status.to_be_bytes()])),
            Frame::Ping(id) => control(6, 0, &id.to_be_bytes()),
            Frame::GoAway { last_stream } => control(7, 0, &cat(&[&last_stream.to_be_bytes(), &[0; 4]])),
            Frame::Ignored(kind) => control(*kind, 0, &[]),
        }
    }
}

/// The two zlib contexts of a connection: one inflating the peer's header blocks, one deflating ours.
pub struct HeaderCodec {
    inflate: Decompress,
    deflate: Compress,
    deflate_primed: bool,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        HeaderCodec {
            inflate: Decompress::new(true),
            deflate: Compress::new(Compression::default(), true),
            deflate_primed: false,
        }
    }
}

impl HeaderCodec {
    /// Inflates and parses one of the peer's header blocks into (name, value) pairs (a value with NULs is split
    /// into several pairs of the same name, as SPDY/3 encodes repeated headers).
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let bad = |m: &dyn std::fmt::Display| SpdyError::Headers(m.to_string());
        let mut out = Vec::with_capacity(256);
        let mut input = block;
        let mut rounds = 0;
        while !input.is_empty() {
            rounds += 1;
            if rounds > 64 || out.len() > MAX_HEADER_BLOCK {
                return Err(bad(&"the block does not end"));
            }
            out.reserve(4096);
            let before = self.inflate.total_in();
            match self.inflate.decompress_vec(input, &mut out, FlushDecompress::Sync) {
                Ok(Status::StreamEnd) => return Err(bad(&"the compression stream ended")),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(&DICTIONARY).map_err(|e| bad(&e))?;
                }
                Err(e) => return Err(bad(&e)),
            }
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
        }
        parse_block(&out)
    }

    /// Encodes and deflates a header block (sync-flushed, so the peer can inflate it at once).
    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        if !self.deflate_primed {
            // Only fails on a stream already started, which this one is not.
            let _ = self.deflate.set_dictionary(&DICTIONARY);
            self.deflate_primed = true;
        }
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k, v] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        // Bounded: each round either consumes input or grows the output buffer it had no room in.
        for _ in 0..64 {
            out.reserve(raw.len() + 64);
            let before = self.deflate.total_in();
            let _ = self.deflate.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

fn parse_block(b: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    let bad = |m: &str| SpdyError::Headers(m.to_string());
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SpdyError> {
        let s = b.get(at..at + n).ok_or_else(|| bad("the block is truncated"))?;
        at += n;
        Ok(s)
    };
    let count_of = |s: &[u8]| u32::from_be_bytes([s[0], s[1], s[2], s[3]]) as usize;
    let pairs = count_of(take(4)?);
    if pairs > 1024 {
        return Err(bad("too many headers"));
    }
    let mut out = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let n = count_of(take(4)?);
        let name = String::from_utf8_lossy(take(n)?).to_ascii_lowercase();
        let n = count_of(take(4)?);
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_drafts() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.starts_with(b"\0\0\0\x07options\0\0\0\x04head"));
        assert!(DICTIONARY.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn frames_round_trip_and_wait_for_their_bytes() {
        let frames = [
            Frame::Data { stream: 3, flags: FLAG_FIN, data: b"hello".to_vec() },
            Frame::SynStream { stream: 1, flags: 0, block: vec![1, 2, 3] },
            Frame::SynReply { stream: 1, flags: 0, block: vec![9] },
            Frame::RstStream { stream: 5, status: RST_CANCEL },
            Frame::Ping(7),
            Frame::GoAway { last_stream: 9 },
        ];
        for f in frames {
            let bytes = f.encode();
            assert_eq!(Frame::parse(&bytes[..bytes.len() - 1]).expect("parses"), None, "{f:?} needs its last byte");
            assert_eq!(Frame::parse(&bytes).expect("parses"), Some((f.clone(), bytes.len())));
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let mut v2 = Frame::Ping(1).encode();
        v2[1] = 2;
        assert_eq!(Frame::parse(&v2), Err(SpdyError::Version(2)));
        let huge = [0u8, 0, 0, 1, 0, 0x7f, 0xff, 0xff];
        assert!(matches!(Frame::parse(&huge), Err(SpdyError::TooLarge(_))));
        let short_rst = [0x80u8, 3, 0, 3, 0, 0, 0, 2, 0, 1];
        assert!(matches!(Frame::parse(&short_rst), Err(SpdyError::Short { .. })));
        let mut codec = HeaderCodec::default();
        assert!(codec.decode(b"not zlib at all").is_err());
    }

    #[test]
    fn header_blocks_share_one_context_per_direction() {
        let (mut ours, mut theirs) = (HeaderCodec::default(), HeaderCodec::default());
        let a = ours.encode(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]);
        let b = ours.encode(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]);
        let got_a = theirs.decode(&a).expect("first block");
        let got_b = theirs.decode(&b).expect("second block, same context");
        assert_eq!(got_a[0], ("streamtype".into(), "error".into()));
        assert_eq!(
            got_b,
            vec![("streamtype".into(), "data".into()), ("port".into(), "80".into()), ("requestid".into(), "0".into())]
        );
        // The second block alone cannot be read by a fresh context: the contexts really are shared.
        assert!(HeaderCodec::default().decode(&b).is_err());
    }
}
